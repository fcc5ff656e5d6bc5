//! Every mean ± sd and every per-seed list in the tables of `docs/results.md` is one the results
//! harness (or a peer's script) wrote into a file under `docs/results/` (or that rounds one to two
//! decimals): the page's numbers come from generated files, not from the hand that wrote it.

use std::path::Path;

/// The text of every file under `dir` that a report is written to (`.md`, `.json`).
fn generated(dir: &Path, all: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            generated(&path, all);
        } else if path.extension().is_some_and(|e| e == "md" || e == "json") {
            all.push_str(&std::fs::read_to_string(&path).unwrap());
            all.push('\n');
        }
    }
}

/// `0.627 ± 0.025` and `0.63, 0.60, 0.65`: the numbers a table row states about runs.
fn statements(row: &str) -> Vec<String> {
    let mut found = Vec::new();
    let chars: Vec<char> = row.chars().collect();
    let number = |i: usize| -> Option<usize> {
        // `d.ddd` or `d.dd` at `i`: the index after it.
        let digits = |from: usize| {
            (from..chars.len())
                .take_while(|&j| chars[j].is_ascii_digit())
                .count()
        };
        (i < chars.len()
            && chars[i].is_ascii_digit()
            && (i == 0 || !chars[i - 1].is_ascii_digit()))
        .then_some(())?;
        let whole = digits(i);
        (i + whole < chars.len() && chars[i + whole] == '.').then_some(())?;
        let fraction = digits(i + whole + 1);
        (fraction == 2 || fraction == 3).then_some(i + whole + 1 + fraction)
    };
    let text = |a: usize, b: usize| chars[a..b].iter().collect::<String>();
    let mut i = 0;
    while i < chars.len() {
        let Some(end) = number(i) else {
            i += 1;
            continue;
        };
        // A mean ± sd.
        if text(end, (end + 3).min(chars.len())) == " ± "
            && let Some(sd_end) = number(end + 3)
        {
            found.push(text(i, sd_end));
            i = sd_end;
            continue;
        }
        // A list of three or more per-seed values, `a, b, c`.
        let mut last = end;
        let mut count = 1;
        while text(last, (last + 2).min(chars.len())) == ", " {
            match number(last + 2) {
                Some(next) if next - (last + 2) == end - i => {
                    last = next;
                    count += 1;
                }
                _ => break,
            }
        }
        if count >= 3 {
            found.push(text(i, last));
        }
        i = last.max(i + 1);
    }
    found
}

#[test]
fn every_table_number_of_the_results_page_is_in_a_generated_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let page = std::fs::read_to_string(root.join("docs/results.md")).unwrap();
    let mut files = String::new();
    generated(&root.join("docs/results"), &mut files);
    let mut checked = 0;
    let mut missing = Vec::new();
    // A page may round a file's `0.627 ± 0.025` to `0.63 ± 0.03`.
    let pair = |s: &str| -> Option<(f64, f64)> {
        let (mean, sd) = s.split_once(" ± ")?;
        Some((mean.parse().ok()?, sd.parse().ok()?))
    };
    let precise: Vec<(f64, f64)> = files
        .lines()
        .flat_map(statements)
        .filter_map(|s| pair(&s))
        .collect();
    let rounds_one = |s: &str| {
        pair(s).is_some_and(|(m, d)| {
            let near = |a: f64, b: f64| (a - b).abs() <= 0.005 + 1e-9;
            precise.iter().any(|&(pm, pd)| near(m, pm) && near(d, pd))
        })
    };
    for row in page.lines().filter(|l| l.starts_with('|')) {
        for statement in statements(row) {
            checked += 1;
            if !files.contains(&statement) && !rounds_one(&statement) {
                missing.push(statement);
            }
        }
    }
    assert!(checked > 20, "only {checked} numbers found on the page");
    assert!(
        missing.is_empty(),
        "numbers on docs/results.md that no file under docs/results/ states: {missing:?}"
    );
}

#[test]
fn statements_are_found() {
    assert_eq!(
        statements("| OPD | **0.627 ± 0.025** | 0.63, 0.60, 0.65 | 2066 | 1.23 → 0.39 |"),
        ["0.627 ± 0.025", "0.63, 0.60, 0.65"]
    );
    assert_eq!(
        statements("| 0.31 | 1573, 1903 | 0.2, 0.3 |"),
        Vec::<String>::new()
    );
}
