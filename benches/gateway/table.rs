//! The gateway benchmark's results: one row per (scenario, metric), one
//! value per column (the gateway and each reference server), the ratio of
//! the gateway to the row's reference; over several runs, the median of
//! each column and the spread of the ratio.

use serde_json::{json, Map, Value};

/// Who served a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Column {
    /// The release `arcp-gateway` binary.
    Gateway,
    /// A minimal hyper server streaming pre-encoded frames.
    Hyper,
    /// Raw sockets, HTTP/1.1 chunked, pre-encoded frames in large writes.
    Plain,
    /// The raw-socket fan-out floor: blocking writes from one thread per core.
    Floor,
    /// nginx with the nchan module, the peer users would otherwise pick.
    Nchan,
}

pub const COLUMNS: [Column; 5] = [
    Column::Gateway,
    Column::Hyper,
    Column::Plain,
    Column::Floor,
    Column::Nchan,
];

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Gateway => "gateway",
            Column::Hyper => "hyper",
            Column::Plain => "plain",
            Column::Floor => "floor",
            Column::Nchan => "nchan",
        }
    }

    fn index(self) -> usize {
        COLUMNS
            .iter()
            .position(|column| *column == self)
            .expect("listed")
    }
}

/// One measured cell.
#[derive(Clone, Copy, Debug)]
pub enum Cell {
    Value(f64),
    /// The server could not run here (nchan not installed): said, never skipped.
    Missing,
    /// The server did not finish within the scenario's time limit (said on
    /// the output, with how far it got).
    TimedOut,
}

/// What the gateway is compared with in a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reference {
    /// The better of the hyper and the plain baseline (replay).
    BetterBaseline,
    Only(Column),
    /// Nothing to compare with (the append costs).
    Nothing,
}

#[derive(Clone)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: &'static str,
    /// Whether a larger value is better (for the ratio's reading).
    pub higher_is_better: bool,
    pub reference: Reference,
    cells: [Option<Cell>; 5],
}

impl Row {
    pub fn new(scenario: &str, metric: &str, unit: &'static str, reference: Reference) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit,
            higher_is_better: matches!(unit, "ev/s" | "MB/s"),
            reference,
            cells: [None; 5],
        }
    }

    pub fn set(mut self, column: Column, cell: Cell) -> Row {
        self.cells[column.index()] = Some(cell);
        self
    }

    pub fn value(mut self, column: Column, value: f64) -> Row {
        self.cells[column.index()] = Some(Cell::Value(value));
        self
    }

    fn number(&self, column: Column) -> Option<f64> {
        match self.cells[column.index()] {
            Some(Cell::Value(value)) => Some(value),
            _ => None,
        }
    }

    /// The column the gateway is compared with in this row.
    fn reference_column(&self) -> Option<Column> {
        match self.reference {
            Reference::Nothing => None,
            Reference::Only(column) => Some(column),
            Reference::BetterBaseline => {
                let better = |a: f64, b: f64| {
                    if self.higher_is_better {
                        a >= b
                    } else {
                        a <= b
                    }
                };
                match (self.number(Column::Hyper), self.number(Column::Plain)) {
                    (Some(hyper), Some(plain)) if better(hyper, plain) => Some(Column::Hyper),
                    (_, Some(_)) => Some(Column::Plain),
                    (Some(_), None) => Some(Column::Hyper),
                    (None, None) => None,
                }
            }
        }
    }

    /// Gateway / reference.
    fn ratio(&self) -> Option<f64> {
        self.ratio_to(self.reference_column()?)
    }

    /// Gateway / `column`.
    fn ratio_to(&self, column: Column) -> Option<f64> {
        let gateway = self.number(Column::Gateway)?;
        let reference = self.number(column)?;
        (reference > 0.0 && gateway > 0.0).then(|| gateway / reference)
    }
}

/// The rows of every run, in order.
#[derive(Default)]
pub struct Results {
    pub runs: Vec<Vec<Row>>,
}

/// One row over all runs: the medians, and the ratio of each run.
struct Summary {
    median: Row,
    raw: Vec<Row>,
    ratios: Vec<f64>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn format_ratio(ratio: f64, higher_is_better: bool) -> String {
    if higher_is_better {
        format!("{:.0} %", 100.0 * ratio)
    } else {
        format!("{ratio:.2}x")
    }
}

fn format_value(value: f64, unit: &str) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

impl Results {
    fn summaries(&self) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = Vec::new();
        for run in &self.runs {
            for row in run {
                let found = summaries.iter_mut().find(|summary| {
                    summary.median.scenario == row.scenario && summary.median.metric == row.metric
                });
                match found {
                    Some(summary) => summary.raw.push(row.clone()),
                    None => summaries.push(Summary {
                        median: row.clone(),
                        raw: vec![row.clone()],
                        ratios: Vec::new(),
                    }),
                }
            }
        }
        for summary in &mut summaries {
            for column in COLUMNS {
                let cells: Vec<Cell> = summary
                    .raw
                    .iter()
                    .filter_map(|row| row.cells[column.index()])
                    .collect();
                let mut values: Vec<f64> = cells
                    .iter()
                    .filter_map(|cell| match cell {
                        Cell::Value(value) => Some(*value),
                        Cell::Missing | Cell::TimedOut => None,
                    })
                    .collect();
                summary.median.cells[column.index()] = if !values.is_empty() {
                    Some(Cell::Value(median(&mut values)))
                } else {
                    cells.first().copied()
                };
            }
            // Every run against the same column: the one the medians chose.
            summary.ratios = match summary.median.reference_column() {
                Some(column) => summary
                    .raw
                    .iter()
                    .filter_map(|row| row.ratio_to(column))
                    .collect(),
                None => Vec::new(),
            };
        }
        summaries
    }

    pub fn print(&self) {
        let runs = self.runs.len();
        println!(
            "| scenario | metric | {} | reference | ratio{} |",
            COLUMNS.map(Column::name).join(" | "),
            if runs > 1 {
                format!(" (medians; min-max over {runs} runs)")
            } else {
                String::new()
            }
        );
        println!("|---|---|{}---|---:|", "---:|".repeat(COLUMNS.len()));
        for summary in self.summaries() {
            let row = &summary.median;
            let cells: Vec<String> = COLUMNS
                .iter()
                .map(|column| match row.cells[column.index()] {
                    Some(Cell::Value(value)) => format_value(value, row.unit),
                    Some(Cell::Missing) => "missing".into(),
                    Some(Cell::TimedOut) => "timeout".into(),
                    None => "-".into(),
                })
                .collect();
            let reference = row.reference_column().map_or("-", Column::name);
            let mut ratio = row
                .ratio()
                .map_or("-".into(), |r| format_ratio(r, row.higher_is_better));
            if runs > 1 && !summary.ratios.is_empty() {
                let low = summary.ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let high = summary.ratios.iter().copied().fold(0.0, f64::max);
                ratio.push_str(&format!(
                    " ({}-{})",
                    format_ratio(low, row.higher_is_better),
                    format_ratio(high, row.higher_is_better)
                ));
            }
            println!(
                "| {} | {} | {} | {reference} | {ratio} |",
                row.scenario,
                row.metric,
                cells.join(" | ")
            );
        }
    }

    pub fn json(&self) -> Value {
        let cell_json = |cell: Option<Cell>| match cell {
            Some(Cell::Value(value)) => json!(value),
            Some(Cell::Missing) => json!("missing"),
            Some(Cell::TimedOut) => json!("timeout"),
            None => Value::Null,
        };
        let rows: Vec<Value> = self
            .summaries()
            .into_iter()
            .map(|summary| {
                let row = &summary.median;
                let mut columns = Map::new();
                let mut raw = Map::new();
                for column in COLUMNS {
                    columns.insert(column.name().into(), cell_json(row.cells[column.index()]));
                    raw.insert(
                        column.name().into(),
                        summary
                            .raw
                            .iter()
                            .map(|run| cell_json(run.cells[column.index()]))
                            .collect(),
                    );
                }
                let low = summary.ratios.iter().copied().reduce(f64::min);
                let high = summary.ratios.iter().copied().reduce(f64::max);
                json!({
                    "scenario": row.scenario,
                    "metric": row.metric,
                    "unit": row.unit,
                    "higher_is_better": row.higher_is_better,
                    "reference": row.reference_column().map(Column::name),
                    "columns": columns,
                    "ratio": row.ratio(),
                    "ratio_min": low,
                    "ratio_max": high,
                    "runs": {"columns": raw, "ratios": summary.ratios},
                })
            })
            .collect();
        Value::Array(rows)
    }
}

/// p50, p99 and max latency rows from each column's latencies (ns).
pub fn latency_rows(
    scenario: &str,
    reference: Reference,
    columns: &mut [(Column, Option<Vec<u64>>)],
) -> Vec<Row> {
    for (_, latencies) in columns.iter_mut() {
        if let Some(latencies) = latencies {
            latencies.sort_unstable();
        }
    }
    [
        ("p50 latency", 0.5),
        ("p99 latency", 0.99),
        ("max latency", 1.0),
    ]
    .into_iter()
    .map(|(metric, p)| {
        let mut row = Row::new(scenario, metric, "ms", reference);
        for (column, latencies) in columns.iter() {
            row = row.set(
                *column,
                match latencies {
                    Some(latencies) => Cell::Value(crate::common::percentile(latencies, p)),
                    None => Cell::Missing,
                },
            );
        }
        row
    })
    .collect()
}
