//! Every run file in `configs/` parses and passes the run checks.

use opd_cli::RunConfig;
use opd_trainers::Objective;

#[test]
fn every_shipped_run_file_is_valid_and_there_is_one_per_method() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut methods = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let name = config.train.objective.name();
            assert_eq!(
                path.file_stem().unwrap().to_str().unwrap(),
                name,
                "{} trains {name}",
                path.display()
            );
            methods.push(name);
        }
    }
    methods.sort();
    let mut all: Vec<&str> = [
        Objective::Sft(Default::default()),
        Objective::Grpo(Default::default()),
        Objective::Opd(Default::default()),
        Objective::Opsd(Default::default()),
        Objective::Sdft(Default::default()),
        Objective::Sdpo(Default::default()),
    ]
    .iter()
    .map(Objective::name)
    .collect();
    all.sort();
    assert_eq!(methods, all);
}
