//! The integration test binary: every test here talks to a real gateway over
//! real sockets.

mod support;
