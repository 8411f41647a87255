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
    Metrics,
    ArcpWebSocket,
}

impl RouteId {
    /// The id as a stable name: the `route` label of the request metrics
    /// and log lines, and `x-route-id` in openapi.yaml.
    pub fn name(self) -> &'static str {
        match self {
            RouteId::Healthz => "Healthz",
            RouteId::Console => "Console",
            RouteId::ConsoleScript => "ConsoleScript",
            RouteId::ConsoleStyle => "ConsoleStyle",
            RouteId::ClientScript => "ClientScript",
            RouteId::SessionStatus => "SessionStatus",
            RouteId::ListAgents => "ListAgents",
            RouteId::CreateSession => "CreateSession",
            RouteId::ResumeSession => "ResumeSession",
            RouteId::CloseSession => "CloseSession",
            RouteId::SessionEvents => "SessionEvents",
            RouteId::Ack => "Ack",
            RouteId::Ping => "Ping",
            RouteId::Pong => "Pong",
            RouteId::ListJobs => "ListJobs",
            RouteId::SubmitJob => "SubmitJob",
            RouteId::GetJob => "GetJob",
            RouteId::CancelJob => "CancelJob",
            RouteId::Subscribe => "Subscribe",
            RouteId::Unsubscribe => "Unsubscribe",
            RouteId::Metrics => "Metrics",
            RouteId::ArcpWebSocket => "ArcpWebSocket",
        }
    }
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
    Route {
        id: RouteId::Metrics,
        method: Method::GET,
        template: "/metrics",
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
/// segments win over captures, for every method: the routes with the most
/// literal segments matching the path are the path's resource, and only
/// their methods are allowed there. So `/v1/sessions/resume` is never read as
/// a session id, and `GET /v1/sessions/resume` is a 405 with `Allow: POST`
/// rather than a lookup of a session called `resume`.
pub fn match_route<'a>(method: &Method, path: &'a str) -> RouteMatch<'a> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let candidates: Vec<(usize, &Route, Vec<&'a str>)> = ROUTES
        .iter()
        .filter_map(|route| {
            let (literal_count, params) = match_template(route.template, &segments)?;
            Some((literal_count, route, params))
        })
        .collect();
    let Some(most_literal) = candidates.iter().map(|(count, _, _)| *count).max() else {
        return RouteMatch::NotFound;
    };
    let mut allowed = Vec::new();
    for (literal_count, route, params) in candidates {
        if literal_count != most_literal {
            continue;
        }
        if route.method == *method {
            return RouteMatch::Found {
                id: route.id,
                params,
            };
        }
        if !allowed.contains(&route.method.as_str()) {
            allowed.push(route.method.as_str());
        }
    }
    RouteMatch::MethodNotAllowed { allowed }
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
    fn route_names_are_the_debug_names() {
        for route in ROUTES {
            assert_eq!(route.id.name(), format!("{:?}", route.id));
        }
    }

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

    #[test]
    fn a_literal_path_allows_only_its_own_methods() {
        for method in [Method::GET, Method::DELETE, Method::OPTIONS, Method::HEAD] {
            assert_eq!(
                match_route(&method, "/v1/sessions/resume"),
                RouteMatch::MethodNotAllowed {
                    allowed: vec!["POST"]
                },
                "{method}"
            );
        }
        assert_eq!(
            match_route(&Method::OPTIONS, "/v1/sessions/sess_1"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["GET", "DELETE"]
            }
        );
        // Below the literal segment, `resume` is an ordinary session id.
        assert_eq!(
            match_route(&Method::GET, "/v1/sessions/resume/events"),
            RouteMatch::Found {
                id: RouteId::SessionEvents,
                params: vec!["resume"]
            }
        );
    }
}
