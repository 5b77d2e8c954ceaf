//! The `koala` binary end to end: exit codes and messages for bad input,
//! `check` and `gradcheck` verdicts (including a gradient case built here
//! by finite differences), config files with overriding flags, and runs
//! killed with SIGKILL at random moments and resumed.
//!
//! Runs use the tiny reference CNN (16×16 input, 10 logits) on a slice of
//! the bundled Fashion-MNIST subset, with one ORT thread: each takes well
//! under a second.

mod support;

use koala::graph::proto::OperatorSetIdProto;
use koala::graph::Model;
use koala::train::TrainConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::cli::{refs, tiny_finetune};
use support::fd_case::{finite_differences_with_tolerance, rel_l2, write_case};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/reference/tiny_cnn/model.onnx")
}

fn fashion() -> PathBuf {
    root().join("data/fashion_mnist_small")
}

fn koala() -> Command {
    Command::new(env!("CARGO_BIN_EXE_koala"))
}

fn run(args: &[&str]) -> Output {
    koala()
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the exit code and that stderr names `needle`; never a panic.
fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "koala {args:?}: wrong exit code; stderr:\n{err}"
    );
    assert!(
        err.contains(needle),
        "koala {args:?}: stderr should name '{needle}':\n{err}"
    );
    assert!(!err.contains("panicked"), "koala {args:?} panicked:\n{err}");
}

/// The fast-run flags shared by the finetune invocations below.
fn fast_flags(run_dir: &Path) -> Vec<String> {
    let m = tiny_model();
    let d = fashion();
    let r = run_dir.display().to_string();
    [
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--limit-train",
        "64",
        "--threads",
        "1",
        "--run-dir",
        &r,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn bad_options_and_missing_inputs_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fast_flags(&tmp.path().join("run"));
    // The base flags with those named in `extra` replaced (clap rejects a
    // flag given twice).
    let with = |extra: &[&str]| -> Vec<String> {
        let named = |f: &str| extra.iter().any(|e| e.split('=').next() == Some(f));
        let mut v = vec!["finetune".to_string()];
        for pair in base.chunks(2).filter(|p| !named(&p[0])) {
            v.extend(pair.iter().cloned());
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--batch-size", "0"], 1, "--batch-size"),
        (&["--lr", "-1"], 1, "--lr"),
        (&["--lr=-1"], 1, "--lr"),
        (&["--optimizer", "foo"], 1, "unknown optimizer 'foo'"),
        (
            &["--data", "/nonexistent/koala-data"],
            1,
            "/nonexistent/koala-data",
        ),
        (
            &["--model", "/nonexistent/koala.onnx"],
            1,
            "/nonexistent/koala.onnx",
        ),
        (&["--batch-size", "many"], 2, "--batch-size"),
        (&["--no-such-flag"], 2, "--no-such-flag"),
    ];
    for (extra, code, needle) in cases {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&refs, *code, needle);
    }
    assert_fails(&["finetune"], 1, "--model");
    // A resumed run uses its config.toml; a flag next to --resume would be
    // ignored, so it is refused.
    assert_fails(
        &["finetune", "--resume", "runs/x", "--max-steps", "50"],
        2,
        "--resume",
    );
    assert_fails(
        &["finetune", "--resume", "/nonexistent/koala-run"],
        1,
        "/nonexistent/koala-run",
    );
    assert_fails(
        &[
            "eval",
            "--model",
            "/nonexistent/koala.onnx",
            "--data",
            fashion().to_str().unwrap(),
        ],
        1,
        "koala.onnx",
    );
    assert_fails(&["frobnicate"], 2, "frobnicate");
}

/// tiny_cnn with its HardSwish node turned into an op of an unknown domain:
/// it lies between every convolution weight and the output.
fn model_with_unknown_op(path: &Path) {
    let mut m = Model::load(&tiny_model()).unwrap();
    let node = m
        .graph_mut()
        .node
        .iter_mut()
        .find(|n| n.op_type == "HardSwish")
        .expect("tiny_cnn has a HardSwish");
    node.op_type = "Mystery".into();
    node.domain = "com.example".into();
    m.proto.opset_import.push(OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    koala::graph::model::write_atomic(path, &m.to_bytes()).unwrap();
}

#[test]
fn check_exits_3_on_an_unsupported_op_and_0_on_a_clean_model() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("mystery.onnx");
    model_with_unknown_op(&bad);
    let out = run(&["check", bad.to_str().unwrap()]);
    let report = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "findings exit 3:\n{report}{}",
        text(&out.stderr)
    );
    assert!(
        report.contains("Mystery"),
        "the report names the op:\n{report}"
    );
    // ONNX Runtime has no kernel for the unknown domain, so freezing the weights before it
    // cannot help (finetune would refuse too): the report must not advise it.
    assert!(
        !report.contains("--freeze") && report.contains("freezing weights does not help"),
        "{report}"
    );
    let out = run(&["check", bad.to_str().unwrap(), "--train", "^fc\\."]);
    let frozen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{frozen}{}", text(&out.stderr));
    assert!(
        frozen.contains("Mystery") && frozen.contains("no ONNX Runtime kernel"),
        "{frozen}"
    );
    let out = run(&["check", tiny_model().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// `koala gradcheck --reference dir --threads 1`: the output and its report.
fn gradcheck(dir: &Path) -> (Output, String) {
    let out = run(&[
        "gradcheck",
        "--reference",
        dir.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    let report = text(&out.stdout);
    (out, report)
}

#[test]
fn gradcheck_passes_on_the_pytorch_reference() {
    let dir = root().join("tests/fixtures/reference/tiny_cnn");
    let (out, report) = gradcheck(&dir);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(report.contains("PASS"), "{report}");
}

/// The finite-difference tolerances are honest: on tiny_cnn's own inputs,
/// the finite-difference gradients lie within them of PyTorch's f64
/// gradients, tensor by tensor.
#[test]
fn fd_tolerances_cover_the_pytorch_reference() {
    let dir = root().join("tests/fixtures/reference/tiny_cnn");
    let case = koala::graph::reference::Case::load(&dir).unwrap();
    let model = Model::load(&dir.join("model.onnx")).unwrap();
    let input = &case.inputs[0];
    let labels = case.labels.i64.as_deref().unwrap();
    let (fd, tols) = finite_differences_with_tolerance(
        &model,
        input.f32.as_deref().unwrap(),
        &input.shape,
        labels,
    );
    // Loss in f64 from f32 logits vs PyTorch's f64 loss: logits agree to
    // ~3e-8 (case.json ort_check), so the loss to ~1e-7.
    assert!(
        (fd.loss - case.loss).abs() <= 1e-6,
        "loss {} vs {}",
        fd.loss,
        case.loss
    );
    assert_eq!(fd.grads.len(), case.grads.len());
    for (g, tol) in fd.grads.iter().zip(&tols) {
        let r = case.grads.iter().find(|r| r.name == g.name).unwrap();
        let reference: Vec<f64> = r.values.iter().map(|&v| v as f64).collect();
        let e = rel_l2(&g.values, &reference);
        eprintln!(
            "{}: finite differences vs PyTorch rel L2 {e:.2e}, tolerance {tol:.2e}",
            g.name
        );
        assert!(
            e <= *tol,
            "{}: finite-difference error {e:.2e} above its tolerance {tol:.2e}",
            g.name
        );
    }
}

/// Deterministic inputs roughly in N(0, 1): sums of 4 uniforms from a
/// fixed-point hash, centred and scaled.
fn fresh_inputs(n: usize) -> Vec<f32> {
    let u = |i: u64| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64) / (1u64 << 24) as f64;
    (0..n as u64)
        .map(|i| ((u(4 * i + 1) + u(4 * i + 2) + u(4 * i + 3) + u(4 * i + 4) - 2.0) * 1.7) as f32)
        .collect()
}

/// A new case: tiny_cnn with other inputs (batch 2) and labels, reference
/// loss and gradients by finite differences. gradcheck passes it, and fails
/// a copy whose fc.weight reference is 10 % off (so the check has teeth).
#[test]
fn gradcheck_on_a_fresh_finite_difference_case() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = [2usize, 3, 16, 16];
    let input = fresh_inputs(shape.iter().product());
    let labels = [4i64, 9];
    let model = Model::load(&tiny_model()).unwrap();
    let (fd, tols) = finite_differences_with_tolerance(&model, &input, &shape, &labels);
    let good = tmp.path().join("fresh");
    write_case(&good, &tiny_model(), &input, &shape, &labels, &fd, &tols);
    let (out, report) = gradcheck(&good);
    eprintln!("{report}");
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(report.contains("PASS"), "{report}");

    let mut wrong = fd;
    let fc = wrong
        .grads
        .iter_mut()
        .find(|g| g.name == "fc.weight")
        .unwrap();
    fc.values.iter_mut().for_each(|v| *v *= 1.1);
    let fc_tol = tols[wrong
        .grads
        .iter()
        .position(|g| g.name == "fc.weight")
        .unwrap()];
    assert!(
        fc_tol < 0.05,
        "fc.weight is linear in the logits, its finite differences are precise (tol {fc_tol:e})"
    );
    let bad = tmp.path().join("tampered");
    write_case(&bad, &tiny_model(), &input, &shape, &labels, &wrong, &tols);
    let (out, report) = gradcheck(&bad);
    assert_eq!(out.status.code(), Some(3), "{report}{}", text(&out.stderr));
    assert!(
        report.contains("FAIL") && report.contains("fc.weight"),
        "{report}"
    );
}

#[test]
fn config_file_with_overriding_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let file = tmp.path().join("my_run.toml");
    let toml = format!(
        "# a user's run\nmodel = {}\ndata = {}\nimage_size = 16\nbatch_size = 8\nlimit_train = 64\nmax_steps = 3\noptimizer = \"adamw\"\nlr = 0.5\nseed = 3\nthreads = 1\nrun_dir = {}\n",
        q(&tiny_model()),
        q(&fashion()),
        q(&run_dir)
    );
    std::fs::write(&file, toml).unwrap();
    let file_cfg = TrainConfig::from_toml_file(&file).unwrap();
    assert_eq!(
        (file_cfg.lr, file_cfg.batch_size, file_cfg.seed),
        (Some(0.5), 8, 3)
    );
    let out = run(&[
        "finetune",
        "--config",
        file.to_str().unwrap(),
        "--lr",
        "0.01",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--no-augment",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("steps 2 "),
        "{}",
        text(&out.stdout)
    );

    let resolved = TrainConfig::from_toml_file(&run_dir.join("config.toml")).unwrap();
    let expected = TrainConfig {
        lr: Some(0.01),
        max_steps: Some(2),
        batch_size: 4,
        augment: false,
        // Not in the file or the flags: the run records the task's default it used.
        loss_var: Some(koala::train::config::LossVar::SecondMoment),
        // Likewise the training graph's target (so a resume keeps it).
        execution_target: Some(koala::graph::ExecutionTarget::Ort),
        ..file_cfg
    };
    assert_eq!(
        resolved, expected,
        "config.toml = the file with the flags applied"
    );

    // A config file with a typo is an error naming the file and the key.
    std::fs::write(&file, "model = \"m.onnx\"\nlearning_rate = 0.1\n").unwrap();
    assert_fails(
        &["finetune", "--config", file.to_str().unwrap()],
        1,
        "learning_rate",
    );
}

/// A TOML string value (paths here hold no quotes or backslashes).
fn q(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// A small LCG for kill delays; seeded from the clock and printed, so a
/// failure can be replayed by fixing the seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Latest complete checkpoint of a run, if any.
fn latest_checkpoint(run_dir: &Path) -> Option<u64> {
    koala::train::checkpoint::list(run_dir)
        .ok()?
        .last()
        .map(|c| c.0)
}

/// Starts `koala finetune` (fresh, or `--resume` when the run has a
/// checkpoint), waits until checkpoint `step` exists (`None`: not at all),
/// then `jitter` more, and SIGKILLs it. Returns whether it was still running.
fn start_and_kill(config: &Path, run_dir: &Path, step: Option<u64>, jitter: Duration) -> bool {
    let mut cmd = koala();
    if latest_checkpoint(run_dir).is_some() {
        cmd.args(["finetune", "--resume", run_dir.to_str().unwrap()]);
    } else {
        cmd.args(["finetune", "--config", config.to_str().unwrap()]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while step.is_some_and(|s| latest_checkpoint(run_dir).is_none_or(|l| l < s)) {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(jitter);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix: no cleanup runs
    child.wait().unwrap();
    running
}

/// A run checkpointing every step, killed four times (during start-up, then
/// a random 0–5 ms after a random checkpoint appeared: in the middle of a
/// step, a checkpoint write, an evaluation or a metrics line), each time
/// restarted or resumed, then resumed to the end: it finishes, and its
/// final weights equal an uninterrupted run's bit for bit.
#[test]
fn killed_runs_resume_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, clean) = (tmp.path().join("killed"), tmp.path().join("clean"));
    let (killed_cfg, clean_cfg) = (
        tmp.path().join("killed.toml"),
        tmp.path().join("clean.toml"),
    );
    for (file, run_dir) in [(&killed_cfg, &killed), (&clean_cfg, &clean)] {
        let toml = format!(
            "model = {}\ndata = {}\nimage_size = 16\nbatch_size = 8\nlimit_train = 64\nmax_steps = 24\ncheckpoint_every = 1\neval_every = 6\nthreads = 1\nrun_dir = {}\n",
            q(&tiny_model()),
            q(&fashion()),
            q(run_dir)
        );
        std::fs::write(file, toml).unwrap();
    }
    let out = run(&["finetune", "--config", clean_cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let mut kills = Vec::new();
    let start_up = Duration::from_micros(rng.below(40_000));
    kills.push((
        None,
        start_up,
        start_and_kill(&killed_cfg, &killed, None, start_up),
    ));
    for _ in 0..3 {
        let done = latest_checkpoint(&killed).unwrap_or(0);
        let target = done + 1 + rng.below((24 - done) / 2);
        let jitter = Duration::from_micros(rng.below(5_000));
        kills.push((
            Some(target),
            jitter,
            start_and_kill(&killed_cfg, &killed, Some(target), jitter),
        ));
    }
    let replay = format!("seed {seed}, kills (after checkpoint, then, was running) {kills:?}");
    eprintln!("{replay}");
    assert!(
        kills.iter().filter(|k| k.2).count() >= 3,
        "{replay}: most kills must hit a running process"
    );
    let out = match latest_checkpoint(&killed) {
        Some(_) => run(&["finetune", "--resume", killed.to_str().unwrap()]),
        None => run(&["finetune", "--config", killed_cfg.to_str().unwrap()]),
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{replay}\n{}",
        text(&out.stderr)
    );
    let w =
        |d: &Path| std::fs::read(d.join("checkpoints/step-00000024/weights.safetensors")).unwrap();
    assert!(
        w(&killed) == w(&clean),
        "{replay}: final weights differ from the uninterrupted run's"
    );
    let exported = Model::load(&killed.join("model.onnx")).unwrap();
    assert_eq!(
        exported.graph().node.len(),
        Model::load(&tiny_model()).unwrap().graph().node.len()
    );
}

/// A run started with relative paths can be resumed from another working
/// directory: config.toml records absolute paths.
#[test]
fn resume_works_from_another_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_model(), tmp.path().join("m.onnx")).unwrap();
    let start = |args: &[&str], cwd: &Path| koala().args(args).current_dir(cwd).output().unwrap();
    let fashion_dir = fashion();
    let out = start(
        &[
            "finetune",
            "--model",
            "m.onnx",
            "--data",
            fashion_dir.to_str().unwrap(),
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--limit-train",
            "32",
            "--max-steps",
            "2",
            "--eval-every",
            "1",
            "--threads",
            "1",
            "--run-dir",
            "run",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let resolved = TrainConfig::from_toml_file(&tmp.path().join("run/config.toml")).unwrap();
    assert!(
        resolved.model.is_absolute() && resolved.run_dir.is_absolute(),
        "{resolved:?}"
    );
    // Drop the last checkpoint so there is something left to train, then resume from "/".
    let ckpts = tmp.path().join("run/checkpoints");
    let mut steps: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    steps.sort();
    assert_eq!(steps.len(), 2, "{steps:?}");
    std::fs::remove_dir_all(steps.last().unwrap()).unwrap();
    let run_dir = tmp.path().join("run");
    let out = start(
        &["finetune", "--resume", run_dir.to_str().unwrap()],
        Path::new("/"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("steps 2 "),
        "{}",
        text(&out.stdout)
    );
}

/// Where the value of `flag` sits in `args` (to change it in place).
fn value_index(args: &[String], flag: &str) -> usize {
    args.iter().position(|a| a == flag).unwrap() + 1
}

/// More classes in the data than model outputs: refused before training,
/// naming the flag value that fixes it.
#[test]
fn too_few_outputs_for_the_data_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let args = tiny_finetune(&[
        "--num-classes",
        "5",
        "--max-steps",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert_fails(&refs(&args), 1, "--num-classes 10");
}

/// A run whose loss turns non-finite skips those steps with a warning and
/// stops after 5 in a row with a message saying what to do.
#[test]
fn non_finite_steps_are_skipped_then_the_run_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let args = tiny_finetune(&[
        "--batch-size",
        "8",
        "--limit-train",
        "64",
        "--max-steps",
        "20",
        "--eval-every",
        "100",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    let out = run(&refs(&args));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("non-finite loss or gradient") && err.contains("step skipped"),
        "{err}"
    );
    assert!(
        err.contains("5 consecutive steps") && err.contains("--clip-grad-norm"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Normalisation flags: three positive numbers, else a message naming the flag.
#[test]
fn normalisation_flags_are_validated() {
    assert_fails(
        &refs(&tiny_finetune(&["--mean", "0.5,0.5"])),
        1,
        "--mean takes 3 finite numbers",
    );
    assert_fails(
        &refs(&tiny_finetune(&["--std", "0.5,0,0.5"])),
        1,
        "--std values must be positive",
    );
}

/// `koala eval` of `model` on the Fashion-MNIST subset at `image_size`, which
/// must succeed; its standard output.
fn eval_ok(model: &Path, image_size: &str) -> String {
    let d = fashion();
    let out = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--image-size",
        image_size,
        "--threads",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Writes tiny_cnn to `path` after `edit` changed the dimensions of its input
/// and outputs (stored intermediate shapes are dropped: they would pin the
/// old ones).
fn tiny_cnn_with_dims(path: &Path, edit: impl Fn(usize, &mut [koala::graph::proto::Dimension])) {
    use koala::graph::proto::type_proto;
    let mut m = Model::load(&tiny_model()).unwrap();
    let g = m.graph_mut();
    g.value_info.clear();
    for (k, v) in g.input.iter_mut().chain(g.output.iter_mut()).enumerate() {
        if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().unwrap().value.as_mut() {
            edit(k, &mut t.shape.as_mut().unwrap().dim);
        }
    }
    koala::graph::model::write_atomic(path, &m.to_bytes()).unwrap();
}

/// tiny_cnn exported with a fixed batch size of 1 (common for ONNX files).
fn model_with_batch_of_one(path: &Path) {
    use koala::graph::proto::dimension::Value;
    tiny_cnn_with_dims(path, |_, dims| dims[0].value = Some(Value::DimValue(1)));
}

/// A fixed batch of one: larger batches are refused with the flags that work,
/// and those flags (batch 1, accumulated) train, export and verify.
#[test]
fn fixed_batch_of_one_trains_with_accumulation() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("batch1.onnx");
    model_with_batch_of_one(&model);
    // `check` accepts it and says how to train it.
    let out = run(&["check", model.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("fixed batch size of 1")
            && text(&out.stdout).contains("--accumulate"),
        "{}",
        text(&out.stdout)
    );
    let mut args = vec!["finetune".to_string()];
    args.extend(fast_flags(&tmp.path().join("run")));
    let mi = value_index(&args, "--model");
    args[mi] = model.display().to_string();
    args.extend(["--max-steps", "2"].map(String::from));
    assert_fails(&refs(&args), 1, "fixed batch size of 1 but koala was asked for batches of 8; pass --batch-size 1 (with --accumulate N");
    let bi = value_index(&args, "--batch-size");
    args[bi] = "1".into();
    args.extend(["--accumulate", "4"].map(String::from));
    let out = run(&refs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("reloaded by ONNX Runtime"),
        "{}",
        text(&out.stdout)
    );
    // The closing lines report the step's arena and list the exported file among the run
    // directory's contents.
    assert!(
        text(&out.stdout).contains("training step's ONNX Runtime arena: ")
            && text(&out.stdout)
                .lines()
                .any(|l| l.starts_with("run directory ")
                    && [
                        "checkpoints/",
                        "config.toml",
                        "curves.png",
                        "metrics.jsonl",
                        "model.onnx"
                    ]
                    .iter()
                    .all(|f| l.contains(f))),
        "{}",
        text(&out.stdout)
    );
    // `eval` feeds such a model in pieces of its batch size: same numbers as
    // the same weights with a free batch axis, fed whole batches (default 64).
    assert_eq!(eval_ok(&model, "16"), eval_ok(&tiny_model(), "16"));
}

/// `fast_flags` without one flag and its value.
fn without(mut args: Vec<String>, flag: &str) -> Vec<String> {
    let i = value_index(&args, flag) - 1;
    args.drain(i..=i + 1);
    args
}

/// A model with a fixed input size and batch, and no --image-size/--batch-size: finetune
/// uses the model's size and batch (making the default batch up by accumulation), exactly
/// as `check` does, instead of check saying "no problems" and finetune refusing (found by a
/// new-user tryout).
#[test]
fn finetune_takes_a_fixed_size_and_batch_from_the_model_as_check_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("batch1.onnx");
    model_with_batch_of_one(&model);
    let mut args = vec!["finetune".to_string()];
    args.extend(without(
        without(fast_flags(&tmp.path().join("run")), "--image-size"),
        "--batch-size",
    ));
    let mi = value_index(&args, "--model");
    args[mi] = model.display().to_string();
    args.extend(["--max-steps", "1", "--eval-every", "1"].map(String::from));
    let out = run(&refs(&args));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    for needle in [
        "image size 16: the model's fixed input size",
        "the model's fixed batch size is 1: --batch-size 1 --accumulate 32",
    ] {
        assert!(all.contains(needle), "'{needle}' missing from:\n{all}");
    }
    let cfg = TrainConfig::from_toml_file(&tmp.path().join("run/config.toml")).unwrap();
    assert_eq!((cfg.batch_size, cfg.accumulate), (1, 32));
    assert_eq!(cfg.image_size.to_string(), "16");
    // check, with the same options, reports the same adoption and no problem.
    let mut check = vec!["check".to_string()];
    check.extend(args[1..].iter().cloned());
    let out = run(&refs(&check));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("--batch-size 1 --accumulate 32"), "{all}");
}

/// An input declared `[N, 3, 16, 3]` reads as NCHW 16×3: the size finetune advises trains
/// (it used to be refused by a minimum of 8 pixels), and `check` refuses whatever finetune
/// refuses (a zero size), with the same message.
#[test]
fn the_image_size_finetune_advises_is_one_it_accepts() {
    use koala::graph::proto::dimension::Value;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("narrow.onnx");
    tiny_cnn_with_dims(&model, |k, dims| {
        if k == 0 {
            dims[3].value = Some(Value::DimValue(3));
        }
    });
    let mut args = vec!["finetune".to_string()];
    args.extend(fast_flags(&tmp.path().join("run")));
    let mi = value_index(&args, "--model");
    args[mi] = model.display().to_string();
    args.extend(["--max-steps", "1"].map(String::from));
    assert_fails(&refs(&args), 1, "pass --image-size 16x3");
    let si = value_index(&args, "--image-size");
    args[si] = "16x3".into();
    let out = run(&refs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut check = vec!["check".to_string()];
    check.extend(args[1..].iter().cloned());
    let out = run(&refs(&check));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // A setting finetune refuses is a problem for check too (exit 3), in finetune's words.
    let li = value_index(&check, "--threads");
    check.splice(
        li - 1..li - 1,
        ["--label-smoothing", "1.5"].map(String::from),
    );
    let out = run(&refs(&check));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("--label-smoothing must be in [0, 1)"),
        "{}",
        text(&out.stdout)
    );
}

/// tiny_cnn with free height and width (it ends in a global average pool, so
/// any size works).
fn model_with_free_height_and_width(path: &Path) {
    use koala::graph::proto::dimension::Value;
    tiny_cnn_with_dims(path, |k, dims| {
        if k == 0 {
            dims[2].value = Some(Value::DimParam("height".into()));
            dims[3].value = Some(Value::DimParam("width".into()));
        }
    });
}

/// `--image-size HxW` trains and evaluates at a non-square size (exact resize),
/// records it in config.toml, and is refused with the model's size when the
/// model's input is fixed to another one.
#[test]
fn non_square_image_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("free_hw.onnx");
    model_with_free_height_and_width(&model);
    let run_dir = tmp.path().join("run");
    let mut args = vec!["finetune".to_string()];
    args.extend(fast_flags(&run_dir));
    let (mi, si) = (
        value_index(&args, "--model"),
        value_index(&args, "--image-size"),
    );
    args[mi] = model.display().to_string();
    args[si] = "12x20".into();
    args.extend(["--max-steps", "2", "--optimizer", "adamw"].map(String::from));
    let out = run(&refs(&args));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("image_size = \"12x20\""), "{config}");
    let exported = run_dir.join("model.onnx");
    let out = eval_ok(&exported, "12x20");
    assert!(out.contains("top-1"), "{out}");

    // The shipped tiny_cnn is fixed to 16×16: the message names its size.
    args[mi] = tiny_model().display().to_string();
    let ri = value_index(&args, "--run-dir");
    args[ri] = tmp.path().join("run2").display().to_string();
    assert_fails(
        &refs(&args),
        1,
        "takes 16×16 images but --image-size is 12x20; pass --image-size 16",
    );
    args[si] = "12y20".into();
    assert_fails(&refs(&args), 2, "expected N or HxW");
}

/// tiny_cnn with its data input renamed `input_ids` and declared int64: what a causal
/// language model's token-id input looks like to the task detection.
fn model_with_token_ids(path: &Path) {
    use koala::graph::proto::{type_proto, DataType};
    let mut m = Model::load(&tiny_model()).unwrap();
    let g = m.graph_mut();
    let old = g.input[0].name.clone();
    g.input[0].name = "input_ids".into();
    if let Some(type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().unwrap().value.as_mut()
    {
        t.elem_type = DataType::Int64 as i32;
    }
    for n in &mut g.node {
        n.input
            .iter_mut()
            .filter(|i| **i == old)
            .for_each(|i| *i = "input_ids".into());
    }
    koala::graph::model::write_atomic(path, &m.to_bytes()).unwrap();
}

/// The task comes from the model's inputs (an int64 `input_ids` input is a causal LM) or from
/// `--task`; the causal-LM task is not wired into the loop yet and says so, naming the flag.
#[test]
fn the_task_is_detected_from_the_inputs_and_a_forced_task_must_fit_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let lm = tmp.path().join("lm.onnx");
    model_with_token_ids(&lm);
    let mut args = tiny_finetune(&["--run-dir", tmp.path().join("a").to_str().unwrap()]);
    let model_at = value_index(&args, "--model");
    args[model_at] = lm.display().to_string();
    // Detected as a causal LM from the int64 'input_ids', but its ids are not [batch, sequence].
    assert_fails(&refs(&args), 1, "rank 4");
    let forced = tiny_finetune(&[
        "--task",
        "causal-lm",
        "--run-dir",
        tmp.path().join("b").to_str().unwrap(),
    ]);
    assert_fails(&refs(&forced), 1, "--task image-classification");
    assert_fails(
        &refs(&tiny_finetune(&["--task", "speech"])),
        2,
        "image-classification",
    );
}
