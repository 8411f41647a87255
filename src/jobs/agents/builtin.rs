//! What the built-in agents do: their inputs, checked at submission, and
//! their runs.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::pacer;
use super::{
    AgentOutcome, BuiltinAgent, JobContext, MAX_RESULT_CHUNK_BYTES, MAX_STREAMED_RESULT_BYTES,
};
use crate::jobs::Terminal;
use crate::protocol::{ErrorCode, ErrorPayload, JobStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TickerInput {
    #[serde(default = "default_tick_count")]
    count: u64,
    #[serde(default = "default_tick_interval_ms")]
    interval_ms: u64,
}

fn default_tick_count() -> u64 {
    5
}

fn default_tick_interval_ms() -> u64 {
    500
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkerInput {
    #[serde(default = "default_chunker_size")]
    size: u64,
    #[serde(default = "default_chunk_size")]
    chunk_size: u64,
    #[serde(default)]
    interval_ms: u64,
    /// Breaks a §8.4 rule on purpose, to show the gateway enforcing it:
    /// `out_of_order` skips a chunk_seq, `inline_result` ends with an inline
    /// result after streaming chunks.
    #[serde(default)]
    violate: Option<ChunkerViolation>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ChunkerViolation {
    OutOfOrder,
    InlineResult,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpenderInput {
    #[serde(default = "default_spender_steps")]
    steps: u64,
    #[serde(default = "default_spender_cost")]
    cost: f64,
    #[serde(default = "default_spender_currency")]
    currency: String,
    #[serde(default = "default_spender_interval_ms")]
    interval_ms: u64,
}

fn default_spender_steps() -> u64 {
    10
}

fn default_spender_cost() -> f64 {
    0.25
}

fn default_spender_currency() -> String {
    "USD".to_owned()
}

fn default_spender_interval_ms() -> u64 {
    50
}

fn default_chunker_size() -> u64 {
    64 * 1024
}

fn default_chunk_size() -> u64 {
    16 * 1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailInput {
    #[serde(default = "default_fail_code")]
    code: String,
    #[serde(default = "default_fail_message")]
    message: String,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    delay_ms: u64,
}

fn default_fail_code() -> String {
    ErrorCode::InternalError.as_str().to_owned()
}

fn default_fail_message() -> String {
    "the fail agent failed, as asked".to_owned()
}

const MAX_TICKS: u64 = 1_000_000;
const MAX_INTERVAL_MS: u64 = 3_600_000;

fn parse_input<T: for<'de> Deserialize<'de>>(input: &Value) -> Result<T, String> {
    // A derived struct would also read an array by position; a built-in
    // agent's input is an object or absent.
    let input = match input {
        Value::Null => json!({}),
        Value::Object(_) => input.clone(),
        _ => return Err("invalid input: expected a JSON object".into()),
    };
    serde_json::from_value(input).map_err(|error| format!("invalid input: {error}"))
}

impl BuiltinAgent {
    /// Checked at submission so bad input is a `400`, not a failed job.
    pub fn validate_input(self, input: &Value) -> Result<(), String> {
        match self {
            BuiltinAgent::Echo | BuiltinAgent::EchoLegacy => Ok(()),
            BuiltinAgent::Firehose => {
                let input: FirehoseInput = parse_input(input)?;
                if input.count > MAX_FIREHOSE_EVENTS || input.size > MAX_FIREHOSE_SIZE {
                    return Err(format!(
                        "input.count must be at most {MAX_FIREHOSE_EVENTS} and input.size at most {MAX_FIREHOSE_SIZE}"
                    ));
                }
                if input.rate == Some(0) || input.rate.is_some_and(|rate| rate > 10_000_000) {
                    return Err("input.rate must be 1..=10000000 events per second".into());
                }
                if input.delay_ms > MAX_INTERVAL_MS {
                    return Err(format!("input.delay_ms must be at most {MAX_INTERVAL_MS}"));
                }
                Ok(())
            }
            BuiltinAgent::Spender => {
                let input: SpenderInput = parse_input(input)?;
                if input.steps > MAX_TICKS || input.interval_ms > MAX_INTERVAL_MS {
                    return Err(format!("input.steps must be at most {MAX_TICKS}, interval_ms at most {MAX_INTERVAL_MS}"));
                }
                if input.currency.is_empty() || input.currency.len() > 16 {
                    return Err("input.currency must be 1..=16 bytes".into());
                }
                Ok(())
            }
            BuiltinAgent::Ticker => {
                let input: TickerInput = parse_input(input)?;
                if input.count > MAX_TICKS {
                    return Err(format!("input.count must be at most {MAX_TICKS}"));
                }
                if input.interval_ms > MAX_INTERVAL_MS {
                    return Err(format!(
                        "input.interval_ms must be at most {MAX_INTERVAL_MS}"
                    ));
                }
                Ok(())
            }
            BuiltinAgent::Chunker => {
                let input: ChunkerInput = parse_input(input)?;
                if input.chunk_size == 0 || input.chunk_size > MAX_RESULT_CHUNK_BYTES {
                    return Err(format!(
                        "input.chunk_size must be 1..={MAX_RESULT_CHUNK_BYTES}"
                    ));
                }
                if input.size > MAX_STREAMED_RESULT_BYTES {
                    return Err(format!(
                        "input.size must be at most {MAX_STREAMED_RESULT_BYTES}"
                    ));
                }
                if input.interval_ms > MAX_INTERVAL_MS {
                    return Err(format!(
                        "input.interval_ms must be at most {MAX_INTERVAL_MS}"
                    ));
                }
                Ok(())
            }
            BuiltinAgent::Fail => {
                let input: FailInput = parse_input(input)?;
                if ErrorCode::parse(&input.code).is_none() {
                    return Err(format!(
                        "input.code {:?} is not an ARCP error code",
                        input.code
                    ));
                }
                if input.delay_ms > MAX_INTERVAL_MS {
                    return Err(format!("input.delay_ms must be at most {MAX_INTERVAL_MS}"));
                }
                Ok(())
            }
        }
    }

    pub async fn run(self, context: JobContext) -> AgentOutcome {
        let terminal = match self {
            BuiltinAgent::Echo => Terminal::Success {
                result: context.input().clone(),
            },
            BuiltinAgent::EchoLegacy => Terminal::Success {
                result: json!({ "echoed": context.input() }),
            },
            BuiltinAgent::Spender => run_spender(&context).await,
            BuiltinAgent::Firehose => run_firehose(&context).await,
            BuiltinAgent::Ticker => run_ticker(&context).await,
            BuiltinAgent::Chunker => run_chunker(&context).await,
            BuiltinAgent::Fail => run_fail(&context).await,
        };
        AgentOutcome::Finished(terminal)
    }
}

fn invalid_input(message: String) -> Terminal {
    Terminal::failure(JobStatus::Error, ErrorCode::InvalidRequest, message)
}

async fn run_ticker(context: &JobContext) -> Terminal {
    let input: TickerInput = match parse_input(context.input()) {
        Ok(input) => input,
        Err(message) => return invalid_input(message),
    };
    let interval = Duration::from_millis(input.interval_ms);
    for current in 1..=input.count {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        } else if current % 64 == 0 {
            tokio::task::yield_now().await;
        }
        let body = json!({ "current": current, "total": input.count, "units": "ticks" });
        if context.event("progress", body).await.is_err() {
            break;
        }
    }
    Terminal::Success {
        result: json!({ "ticks": input.count }),
    }
}

async fn run_chunker(context: &JobContext) -> Terminal {
    let input: ChunkerInput = match parse_input(context.input()) {
        Ok(input) => input,
        Err(message) => return invalid_input(message),
    };
    let result_id = format!("res_{:032x}", rand::random::<u128>());
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789\n";
    let mut hasher = Sha256::new();
    let mut produced: u64 = 0;
    let mut chunk_seq: u64 = 0;
    loop {
        let length = input.chunk_size.min(input.size - produced);
        let data: String = (produced..produced + length)
            .map(|i| alphabet[(i % alphabet.len() as u64) as usize] as char)
            .collect();
        hasher.update(data.as_bytes());
        produced += length;
        let more = produced < input.size;
        let skip = input.violate == Some(ChunkerViolation::OutOfOrder) && chunk_seq == 1;
        let body = json!({
            "result_id": result_id,
            "chunk_seq": if skip { chunk_seq + 1 } else { chunk_seq },
            "data": data,
            "encoding": "utf8",
            "more": more,
        });
        if context.event("result_chunk", body).await.is_err() {
            break;
        }
        chunk_seq += 1;
        if !more {
            break;
        }
        if input.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(input.interval_ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    if input.violate == Some(ChunkerViolation::InlineResult) {
        return Terminal::Success {
            result: json!("inline, after chunks"),
        };
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Terminal::StreamedSuccess {
        result_id,
        result_size: produced,
        summary: format!("{produced} bytes in {chunk_seq} chunks, sha256 {digest}"),
    }
}

const MAX_FIREHOSE_EVENTS: u64 = 10_000_000;
const MAX_FIREHOSE_SIZE: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirehoseInput {
    #[serde(default = "default_firehose_count")]
    count: u64,
    #[serde(default = "default_firehose_size")]
    size: u64,
    /// Events per second; absent means as fast as possible.
    #[serde(default)]
    rate: Option<u64>,
    /// Wait before the first event (lets subscribers attach).
    #[serde(default)]
    delay_ms: u64,
}

fn default_firehose_count() -> u64 {
    1000
}

fn default_firehose_size() -> u64 {
    64
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

async fn run_firehose(context: &JobContext) -> Terminal {
    let input: FirehoseInput = match parse_input(context.input()) {
        Ok(input) => input,
        Err(message) => return invalid_input(message),
    };
    if input.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(input.delay_ms)).await;
    }
    let padding = "x".repeat(input.size as usize);
    let started = tokio::time::Instant::now();
    let pace = input
        .rate
        .map(|rate| (rate, Duration::from_secs_f64(1.0 / rate as f64)));
    let mut emitted = 0u64;
    while emitted < input.count {
        emitted += 1;
        match pace {
            // Paced: sleep until this event is due (one timer per event, so
            // a thousand slow firehoses cost a thousand wakeups a second,
            // not a million), evenly spaced rather than at millisecond ticks.
            Some((rate, period)) => {
                let due = started + Duration::from_secs_f64((emitted - 1) as f64 / rate as f64);
                pacer::sleep_until_paced(due, period).await;
            }
            // Unpaced: yield now and then so other tasks run.
            None if emitted % 256 == 0 => tokio::task::yield_now().await,
            None => {}
        }
        let body =
            json!({ "level": "debug", "message": padding, "n": emitted, "ts_ns": unix_nanos() });
        if context.event("log", body).await.is_err() {
            return Terminal::Success {
                result: json!({ "emitted": emitted - 1 }),
            };
        }
    }
    Terminal::Success {
        result: json!({ "emitted": emitted }),
    }
}

async fn run_spender(context: &JobContext) -> Terminal {
    let input: SpenderInput = match parse_input(context.input()) {
        Ok(input) => input,
        Err(message) => return invalid_input(message),
    };
    let mut spent = 0.0;
    for step in 1..=input.steps {
        if input.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(input.interval_ms)).await;
        }
        let metric =
            json!({ "name": "cost.inference", "value": input.cost, "unit": input.currency });
        if context.event("metric", metric).await.is_err() {
            break;
        }
        spent += input.cost;
        let progress = json!({ "current": step, "total": input.steps, "units": "steps" });
        if context.event("progress", progress).await.is_err() {
            break;
        }
    }
    Terminal::Success {
        result: json!({ "spent": spent, "currency": input.currency }),
    }
}

async fn run_fail(context: &JobContext) -> Terminal {
    let input: FailInput = match parse_input(context.input()) {
        Ok(input) => input,
        Err(message) => return invalid_input(message),
    };
    if input.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(input.delay_ms)).await;
    }
    let code = ErrorCode::parse(&input.code).unwrap_or(ErrorCode::InternalError);
    let retryable = code.forced_retryable().or(input.retryable).unwrap_or(false);
    let final_status = match code {
        ErrorCode::Cancelled => JobStatus::Cancelled,
        ErrorCode::Timeout => JobStatus::TimedOut,
        _ => JobStatus::Error,
    };
    Terminal::Failure {
        final_status,
        error: ErrorPayload {
            code,
            message: input.message,
            retryable,
        },
    }
}
