//! Every run file in `configs/` parses, passes the run checks and names data files that
//! exist; every method has one.

use opd_cli::RunConfig;
use opd_tasks::data::read_jsonl;
use opd_trainers::Objective;

#[test]
fn every_shipped_run_file_is_valid_and_every_method_has_one() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut methods = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let name = config.train.objective.name();
            // `opsd.toml`, or `opsd-gsm.toml` for a variant on other data.
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                stem.split('-').next(),
                Some(name),
                "{} trains {name}",
                path.display()
            );
            // Data files are named from the repository's root, where `opd train` runs.
            for data in config.data.files() {
                let tasks = read_jsonl(folder.join("..").join(data));
                assert!(tasks.is_ok_and(|t| !t.is_empty()), "{}", data.display());
            }
            methods.push(name);
        }
    }
    methods.sort();
    methods.dedup();
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
