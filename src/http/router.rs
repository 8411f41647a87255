//! The route table and the matcher. Every endpoint is one row of [`ROUTES`];
//! `dispatch` in `http/mod.rs` is one `match` over [`RouteId`]. The table is
//! also what the OpenAPI test walks, so the document cannot forget a route.

use hyper::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteId {
    Healthz,
    Console,
    ConsoleScript,
    ConsoleStyle,
    ClientScript,
    SessionStatus,
    ListAgents,
    CreateSession,
    ResumeSession,
    CloseSession,
    SessionEvents,
    Ack,
    Ping,
    Pong,
    ListJobs,
    SubmitJob,
    GetJob,
    CancelJob,
    Subscribe,
    Unsubscribe,
    ArcpWebSocket,
}

pub struct Route {
    pub id: RouteId,
    pub method: Method,
    /// Path template; `{name}` segments capture one path segment.
    pub template: &'static str,
}

pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::ArcpWebSocket,
        method: Method::GET,
        template: "/arcp",
    },
    Route {
        id: RouteId::Healthz,
        method: Method::GET,
        template: "/healthz",
    },
    Route {
        id: RouteId::Console,
        method: Method::GET,
        template: "/",
    },
    Route {
        id: RouteId::ConsoleScript,
        method: Method::GET,
        template: "/console.js",
    },
    Route {
        id: RouteId::ConsoleStyle,
        method: Method::GET,
        template: "/console.css",
    },
    Route {
        id: RouteId::ClientScript,
        method: Method::GET,
        template: "/v1/client.js",
    },
    Route {
        id: RouteId::SessionStatus,
        method: Method::GET,
        template: "/v1/sessions/{session_id}",
    },
    Route {
        id: RouteId::ListAgents,
        method: Method::GET,
        template: "/v1/agents",
    },
    Route {
        id: RouteId::CreateSession,
        method: Method::POST,
        template: "/v1/sessions",
    },
    Route {
        id: RouteId::ResumeSession,
        method: Method::POST,
        template: "/v1/sessions/resume",
    },
    Route {
        id: RouteId::CloseSession,
        method: Method::DELETE,
        template: "/v1/sessions/{session_id}",
    },
    Route {
        id: RouteId::SessionEvents,
        method: Method::GET,
        template: "/v1/sessions/{session_id}/events",
    },
    Route {
        id: RouteId::Ack,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/ack",
    },
    Route {
        id: RouteId::Ping,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/ping",
    },
    Route {
        id: RouteId::Pong,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/pong",
    },
    Route {
        id: RouteId::ListJobs,
        method: Method::GET,
        template: "/v1/sessions/{session_id}/jobs",
    },
    Route {
        id: RouteId::SubmitJob,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/jobs",
    },
    Route {
        id: RouteId::GetJob,
        method: Method::GET,
        template: "/v1/sessions/{session_id}/jobs/{job_id}",
    },
    Route {
        id: RouteId::CancelJob,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/jobs/{job_id}/cancel",
    },
    Route {
        id: RouteId::Subscribe,
        method: Method::POST,
        template: "/v1/sessions/{session_id}/subscriptions",
    },
    Route {
        id: RouteId::Unsubscribe,
        method: Method::DELETE,
        template: "/v1/sessions/{session_id}/subscriptions/{job_id}",
    },
];

/// The outcome of matching a request line.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    Found { id: RouteId, params: Vec<&'a str> },
    MethodNotAllowed { allowed: Vec<&'static str> },
    NotFound,
}

/// Matches a path (already stripped of its query) against the table. Literal
/// segments win over captures, so `/v1/sessions/resume` is never read as a
/// session id.
pub fn match_route<'a>(method: &Method, path: &'a str) -> RouteMatch<'a> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut allowed = Vec::new();
    let mut best: Option<(usize, RouteId, Vec<&'a str>)> = None;
    for route in ROUTES {
        let Some((literal_count, params)) = match_template(route.template, &segments) else {
            continue;
        };
        if route.method != *method {
            if !allowed.contains(&route.method.as_str()) {
                allowed.push(route.method.as_str());
            }
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(count, _, _)| literal_count > *count)
        {
            best = Some((literal_count, route.id, params));
        }
    }
    match best {
        Some((_, id, params)) => RouteMatch::Found { id, params },
        None if !allowed.is_empty() => RouteMatch::MethodNotAllowed { allowed },
        None => RouteMatch::NotFound,
    }
}

fn match_template<'a>(template: &str, segments: &[&'a str]) -> Option<(usize, Vec<&'a str>)> {
    let parts: Vec<&str> = template.split('/').skip(1).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut literal_count = 0;
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if part.starts_with('{') {
            if segment.is_empty() {
                return None;
            }
            params.push(*segment);
        } else if part == segment {
            literal_count += 1;
        } else {
            return None;
        }
    }
    Some((literal_count, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_win_over_captures() {
        assert_eq!(
            match_route(&Method::POST, "/v1/sessions/resume"),
            RouteMatch::Found {
                id: RouteId::ResumeSession,
                params: vec![]
            }
        );
        assert_eq!(
            match_route(&Method::POST, "/v1/sessions/sess_1/jobs/job_2/cancel"),
            RouteMatch::Found {
                id: RouteId::CancelJob,
                params: vec!["sess_1", "job_2"]
            }
        );
    }

    #[test]
    fn wrong_methods_and_unknown_paths_are_told_apart() {
        assert_eq!(
            match_route(&Method::DELETE, "/v1/sessions"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["POST"]
            }
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/nothing"),
            RouteMatch::NotFound
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/sessions//events"),
            RouteMatch::NotFound
        );
        assert_eq!(match_route(&Method::GET, "/healthz/"), RouteMatch::NotFound);
    }
}
