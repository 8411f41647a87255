//! The cluster benchmark's table: one row per (scenario, metric), one
//! column per target, printed as Markdown and written as JSON.

use serde_json::{json, Value};

use crate::stack::Cpu;

// ---------------------------------------------------------------- reporting

pub struct Row {
    scenario: String,
    metric: String,
    unit: &'static str,
    /// One value per target, in the targets' order (None: not measured
    /// there, said in the scenario's text).
    values: Vec<Option<f64>>,
}

pub struct Table {
    pub targets: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    /// Sets `value` for target `column` in the row (scenario, metric).
    pub fn put(
        &mut self,
        column: usize,
        scenario: &str,
        metric: &str,
        unit: &'static str,
        value: Option<f64>,
    ) {
        let width = self.targets.len();
        let position = self
            .rows
            .iter()
            .position(|row| row.scenario == scenario && row.metric == metric);
        let row = match position {
            Some(index) => &mut self.rows[index],
            None => {
                self.rows.push(Row {
                    scenario: scenario.into(),
                    metric: metric.into(),
                    unit,
                    values: vec![None; width],
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        row.values[column] = value;
    }

    pub fn print(&self) {
        println!("| scenario | metric | {} |", self.targets.join(" | "));
        println!("|---|---|{}", "---:|".repeat(self.targets.len()));
        for row in &self.rows {
            let cells: Vec<String> = row
                .values
                .iter()
                .map(|value| match value {
                    Some(value) if *value >= 100.0 => format!("{value:.0} {}", row.unit),
                    Some(value) => format!("{value:.2} {}", row.unit),
                    None => "-".into(),
                })
                .collect();
            println!(
                "| {} | {} | {} |",
                row.scenario,
                row.metric,
                cells.join(" | ")
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let values: serde_json::Map<String, Value> = self
                    .targets
                    .iter()
                    .zip(&row.values)
                    .map(|(target, value)| (target.clone(), json!(value)))
                    .collect();
                json!({"scenario": row.scenario, "metric": row.metric, "unit": row.unit, "values": values})
            })
            .collect();
        json!({"targets": self.targets, "rows": rows})
    }
}

/// CPU used between two readings over `seconds`, as % of one core: all
/// nodes, the busiest node, nginx, Redis.
pub fn cpu_rows(
    table: &mut Table,
    column: usize,
    scenario: &str,
    before: &Cpu,
    after: &Cpu,
    seconds: f64,
) {
    let percent = |a: f64, b: f64| 100.0 * (b - a) / seconds;
    let nodes: Vec<f64> = before
        .nodes
        .iter()
        .zip(&after.nodes)
        .map(|(a, b)| percent(*a, *b))
        .collect();
    let both = |a: Option<f64>, b: Option<f64>| Some(percent(a?, b?));
    table.put(
        column,
        scenario,
        "CPU, nodes (sum)",
        "%",
        Some(nodes.iter().sum()),
    );
    let busiest = nodes.iter().copied().fold(0.0, f64::max);
    table.put(column, scenario, "CPU, busiest node", "%", Some(busiest));
    table.put(
        column,
        scenario,
        "CPU, nginx",
        "%",
        both(before.nginx, after.nginx),
    );
    table.put(
        column,
        scenario,
        "CPU, Redis",
        "%",
        both(before.redis, after.redis),
    );
}
