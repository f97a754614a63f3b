//! Where the machine's CPU went while a stage was timed: linkwork's processes, Postgres,
//! the broker, the load generator (this process), anything else, and idle. Read from
//! `/proc` at the start and the end of the timed window, so every figure can be read
//! beside it: a stage whose remaining time is the broker's or Postgres's own shows it
//! here, and one that leaves the machine idle is waiting on round trips, not on CPU.
//!
//! Written by hand: the split needs only the tick counters of `/proc/<pid>/stat` and
//! `/proc/stat`, and classifying processes by what they are is linkwork's own rule.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

/// What a process is, for the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Linkwork,
    Postgres,
    Broker,
    LoadGenerator,
    Other,
}

const PARTS: [Part; 5] = [
    Part::Linkwork,
    Part::Postgres,
    Part::Broker,
    Part::LoadGenerator,
    Part::Other,
];

/// The counters at one moment.
pub struct Snapshot {
    at: Instant,
    total_ticks: u64,
    idle_ticks: u64,
    processes: HashMap<u32, (Part, u64)>,
}

/// CPU time over a window, in core-seconds, by part.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// Events (or referrals) handled in the window.
    pub events: f64,
    pub wall_seconds: f64,
    pub cores: f64,
    pub linkwork: f64,
    pub postgres: f64,
    pub broker: f64,
    pub load_generator: f64,
    pub other: f64,
    pub idle: f64,
}

impl CpuUse {
    fn add(&mut self, part: Part, seconds: f64) {
        match part {
            Part::Linkwork => self.linkwork += seconds,
            Part::Postgres => self.postgres += seconds,
            Part::Broker => self.broker += seconds,
            Part::LoadGenerator => self.load_generator += seconds,
            Part::Other => self.other += seconds,
        }
    }

    fn of(&self, part: Part) -> f64 {
        match part {
            Part::Linkwork => self.linkwork,
            Part::Postgres => self.postgres,
            Part::Broker => self.broker,
            Part::LoadGenerator => self.load_generator,
            Part::Other => self.other,
        }
    }

    /// The sum of several windows (runs of one stage).
    pub fn total(uses: &[CpuUse]) -> CpuUse {
        let mut sum = CpuUse::default();
        for one in uses {
            sum.events += one.events;
            sum.wall_seconds += one.wall_seconds;
            sum.cores = sum.cores.max(one.cores);
            for part in PARTS {
                sum.add(part, one.of(part));
            }
            sum.idle += one.idle;
        }
        sum
    }

    /// Each part's share of the machine (cores × wall time), in per cent.
    fn shares(&self) -> [f64; 6] {
        let capacity = (self.cores * self.wall_seconds).max(f64::MIN_POSITIVE);
        let mut shares = [0.0; 6];
        for (index, part) in PARTS.iter().enumerate() {
            shares[index] = 100.0 * self.of(*part) / capacity;
        }
        shares[5] = 100.0 * self.idle / capacity;
        shares
    }
}

/// user + system ticks of a process and, when `children`, of its waited-for children
/// (a `linkwork replay` this process ran, Postgres backends the postmaster reaped).
fn process_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: read after the last.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some((field(11)? + field(12)?, field(13)? + field(14)?))
}

fn classify(pid: u32, own: u32) -> Option<Part> {
    if pid == own {
        return Some(Part::LoadGenerator);
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim_end();
    if comm == "postgres" {
        return Some(Part::Postgres);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut arguments = cmdline.split(|byte| *byte == 0);
    let program = arguments.next().unwrap_or_default();
    let program = String::from_utf8_lossy(program);
    if program.rsplit('/').next() == Some("linkwork") {
        return Some(Part::Linkwork);
    }
    if comm == "java" && cmdline.windows(5).any(|window| window == b"kafka") {
        return Some(Part::Broker);
    }
    Some(Part::Other)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is within user).
    let total = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

impl Snapshot {
    pub fn now() -> Snapshot {
        let own = std::process::id();
        let (total_ticks, idle_ticks) = machine_ticks().unwrap_or_default();
        let mut processes = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let (Some(part), Some((own_ticks, children))) =
                    (classify(pid, own), process_ticks(pid))
                else {
                    continue;
                };
                // The load generator's children are linkwork's: counted apart below.
                let ticks = if pid == own {
                    own_ticks
                } else {
                    own_ticks + children
                };
                processes.insert(pid, (part, ticks));
                if pid == own {
                    processes.insert(0, (Part::Linkwork, children));
                }
            }
        }
        Snapshot {
            at: Instant::now(),
            total_ticks,
            idle_ticks,
            processes,
        }
    }

    /// What was used from `start` to this snapshot. A process that started in between
    /// counts from zero; one that ended and was not reaped by a process counted here
    /// is lost (rare: the pools keep their connections).
    pub fn since(&self, start: &Snapshot, events: usize) -> CpuUse {
        let mut used = CpuUse {
            events: events as f64,
            wall_seconds: self.at.duration_since(start.at).as_secs_f64(),
            cores: std::thread::available_parallelism()
                .map(|count| count.get() as f64)
                .unwrap_or(1.0),
            ..CpuUse::default()
        };
        let machine = self.total_ticks.saturating_sub(start.total_ticks) as f64;
        let idle = self.idle_ticks.saturating_sub(start.idle_ticks) as f64;
        // /proc/stat counts every CPU's ticks over the window: that gives the length of
        // a tick without asking libc (USER_HZ, 100 on Linux, is the fallback).
        let per_tick = if machine > 0.0 {
            used.cores * used.wall_seconds / machine
        } else {
            0.01
        };
        for (pid, (part, ticks)) in &self.processes {
            let before = start
                .processes
                .get(pid)
                .filter(|(was, _)| was == part)
                .map_or(0, |(_, ticks)| *ticks);
            used.add(*part, ticks.saturating_sub(before) as f64 * per_tick);
        }
        used.idle = idle * per_tick;
        used
    }
}

/// One stage's split, for the table and the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub stage: String,
    /// Core-seconds summed over the stage's runs.
    pub used: CpuUse,
}

impl Row {
    pub fn new(stage: &str, uses: &[CpuUse]) -> Row {
        Row {
            stage: stage.to_owned(),
            used: CpuUse::total(uses),
        }
    }

    /// linkwork's CPU time per event, in microseconds.
    fn linkwork_per_event(&self) -> f64 {
        if self.used.events > 0.0 {
            self.used.linkwork / self.used.events * 1e6
        } else {
            0.0
        }
    }

    /// Postgres's and the broker's, together, per event.
    fn parts_per_event(&self) -> f64 {
        if self.used.events > 0.0 {
            (self.used.postgres + self.used.broker) / self.used.events * 1e6
        } else {
            0.0
        }
    }
}

/// The split as a table: each part's share of the machine over the timed windows.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "stage",
        "linkwork",
        "Postgres",
        "broker",
        "load generator",
        "other",
        "idle",
        "linkwork µs/event",
        "Postgres+broker µs/event",
    ];
    let mut lines = vec![header
        .iter()
        .map(|cell| cell.to_string())
        .collect::<Vec<_>>()];
    for row in rows {
        let shares = row.used.shares();
        let mut line = vec![row.stage.clone()];
        line.extend(shares.iter().map(|share| format!("{share:.0} %")));
        line.push(format!("{:.0}", row.linkwork_per_event()));
        line.push(format!("{:.0}", row.parts_per_event()));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            lines
                .iter()
                .map(|line| line[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::from(
        "where the CPU went while each stage was timed (share of all cores × wall time):\n",
    );
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_of_its_own_shows_as_the_load_generator() {
        // Spin until this process has used 0.3 s of CPU (by its own tick counter, not
        // the wall clock: on a machine busy with other tests the wall says little).
        let own = std::process::id();
        let ticks = || process_ticks(own).map_or(0, |(own, _)| own);
        let start = Snapshot::now();
        let (from, began) = (ticks(), Instant::now());
        let mut spin = 0u64;
        while ticks() < from + 30 && began.elapsed().as_secs() < 60 {
            for _ in 0..100_000 {
                spin = spin.wrapping_add(std::hint::black_box(1));
            }
        }
        std::hint::black_box(spin);
        let used = Snapshot::now().since(&start, 0);
        assert!(used.load_generator >= 0.2, "{used:?}");
        assert!(used.wall_seconds >= 0.15, "{used:?}");
        // Other processes may start, end or be reaped inside the window, so only this
        // process's share and the idle share are bounded here.
        let shares = used.shares();
        assert!((0.0..=101.0).contains(&shares[3]), "{shares:?}");
        assert!((0.0..=101.0).contains(&shares[5]), "{shares:?}");
    }

    #[test]
    fn the_table_gives_each_part_its_share_and_the_cost_per_event() {
        let used = CpuUse {
            events: 10_000.0,
            wall_seconds: 2.0,
            cores: 2.0,
            linkwork: 1.0,
            postgres: 2.0,
            broker: 0.4,
            load_generator: 0.2,
            other: 0.0,
            idle: 0.4,
        };
        let table = table(&[Row::new("routing", &[used, used])]);
        let line = table.lines().nth(2).expect("a row");
        assert!(line.starts_with("routing"), "{table}");
        let cells: Vec<&str> = line.split_whitespace().collect();
        // 1 of 4 core-seconds is linkwork's; 2 of 4 Postgres's.
        assert_eq!(cells[1..=2], ["25", "%"], "{table}");
        assert_eq!(cells[3..=4], ["50", "%"], "{table}");
        // 2 core-seconds over 20,000 events: 100 µs each; Postgres + broker 4.8 s.
        assert_eq!(cells[cells.len() - 2], "100", "{table}");
        assert_eq!(cells[cells.len() - 1], "240", "{table}");
    }
}
