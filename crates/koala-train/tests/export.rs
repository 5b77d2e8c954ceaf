//! Export round trip: the exported ONNX is the user's model with only the
//! trained weights changed. It loads in ONNX Runtime on its own, matches the
//! training graph and the checkpoint, keeps the model's metadata, node names
//! and dynamic batch axis, and never replaces the input file.

mod common;

use common::*;
use koala_graph::proto::StringStringEntryProto;
use koala_graph::Model;
use koala_runtime::{Session, SessionOptions, TensorView};
use std::path::Path;

/// The tiny CNN with model-level fields a user's exporter would set (and
/// opset 18, which every op of the model has in the same form as in 17).
fn decorated_model(path: &Path) -> Model {
    let mut m = Model::load(&tiny_model()).unwrap();
    m.proto.metadata_props.push(StringStringEntryProto {
        key: "author".into(),
        value: "koala tests".into(),
    });
    m.proto.metadata_props.push(StringStringEntryProto {
        key: "labels".into(),
        value: "red,green,blue,yellow".into(),
    });
    m.proto.producer_name = "koala-export-test".into();
    m.proto.producer_version = "9.9".into();
    m.proto.doc_string = "tiny CNN with a doc string".into();
    m.proto.model_version = 42;
    for o in m
        .proto
        .opset_import
        .iter_mut()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        o.version = 18;
    }
    koala_graph::model::write_atomic(path, &m.to_bytes()).unwrap();
    Model::load(path).unwrap()
}

/// Deterministic inputs in [-2, 2): a fixed-point hash, no RNG crate needed.
fn inputs(batch: usize) -> Vec<f32> {
    (0..batch * 3 * 16 * 16)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 4096) as f32 / 1024.0 - 2.0)
        .collect()
}

fn logits(session: &mut Session, x: &[f32], batch: usize) -> Vec<f32> {
    let shape = [batch, 3, 16, 16];
    let out = session
        .run(&[("input", TensorView::f32(x, &shape))])
        .unwrap();
    out[0].as_f32().unwrap().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exported_model_round_trips() {
    let (tmp, data) = scratch_with_data(8);
    let input_path = tmp.path().join("input.onnx");
    let input = decorated_model(&input_path);
    let input_bytes = std::fs::read(&input_path).unwrap();
    let out_path = tmp.path().join("out/tuned.onnx");
    let run = tmp.path().join("run");
    let cfg = koala_train::TrainConfig {
        model: input_path.clone(),
        max_steps: Some(4),
        export: Some(out_path.clone()),
        ..fast_config(&data, &run)
    };
    let s = koala_train::finetune(cfg).unwrap();
    assert_eq!(s.export, out_path);
    // The training graph and the exported inference graph compute the same
    // f32 forward pass; ORT may order or fuse the arithmetic differently
    // (weights are graph inputs in one, constants in the other), so they can
    // differ by rounding: logits are O(1), f32 ulp there is ~1e-7, and 1e-5
    // leaves room for ~100 ulps of accumulated reordering but not for any
    // wrong weight (one update step moves logits by ~1e-2).
    eprintln!(
        "exported vs training-graph logits: max |Δ| {:e}",
        s.export_max_diff
    );
    assert!(
        s.export_max_diff <= 1e-5,
        "exported vs training-graph logits: max |Δ| {:e}",
        s.export_max_diff
    );
    // A second, independent runtime (tract, pure Rust) runs the exported file
    // and agrees with ORT to the same rounding bound: the export is plain ONNX,
    // not something only ORT accepts. (The check itself fails loudly: a wrong
    // weight moves logits by ~1e-2.)
    match &s.export_tract {
        Ok(d) => assert!(
            *d <= 1e-5,
            "tract vs ORT on the exported file: max |Δ| {d:e}"
        ),
        Err(e) => panic!("tract could not run the exported tiny CNN: {e}"),
    }
    assert_eq!(
        std::fs::read(&input_path).unwrap(),
        input_bytes,
        "the input model is unchanged"
    );

    let exported = Model::load(&out_path).unwrap();
    let (p, q) = (&input.proto, &exported.proto);
    // The user's entries are kept, in order; koala adds its preprocessing record after them
    // (keys under `koala.`, checked in image_inputs.rs).
    assert_eq!(
        q.metadata_props[..p.metadata_props.len()],
        p.metadata_props[..],
        "metadata_props kept"
    );
    assert!(q.metadata_props[p.metadata_props.len()..]
        .iter()
        .all(|e| e.key.starts_with("koala.")));
    assert_eq!(
        (
            &q.producer_name,
            &q.producer_version,
            &q.doc_string,
            q.model_version
        ),
        (
            &p.producer_name,
            &p.producer_version,
            &p.doc_string,
            p.model_version
        )
    );
    assert_eq!(q.opset_import, p.opset_import, "opset imports kept");
    assert_eq!(q.ir_version, p.ir_version);
    let names = |m: &Model| {
        m.graph()
            .node
            .iter()
            .map(|n| (n.name.clone(), n.op_type.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&exported), names(&input), "node names and order kept");
    let dims = koala_graph::training::declared_dims(&exported.graph().input[0]);
    assert_eq!(
        dims,
        vec![None, Some(3), Some(16), Some(16)],
        "the batch axis stays dynamic"
    );

    assert_weights_are_the_checkpoints(&input, &exported, &run, 4);
    assert_runs_at_other_batch_sizes(&out_path);
}

/// Trained initializers hold exactly the final checkpoint's values; the
/// others (BatchNorm running statistics) are the input model's, bit for bit.
fn assert_weights_are_the_checkpoints(input: &Model, exported: &Model, run: &Path, step: u64) {
    let bytes = checkpoint_weights(run, step);
    let ckpt = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut trained = 0;
    for (t_in, t_out) in input
        .graph()
        .initializer
        .iter()
        .zip(&exported.graph().initializer)
    {
        assert_eq!(
            (&t_in.name, &t_in.dims, t_in.data_type),
            (&t_out.name, &t_out.dims, t_out.data_type)
        );
        let out = koala_graph::tensor::to_f32(t_out).unwrap();
        match ckpt.tensor(&t_out.name) {
            Ok(v) => {
                let saved: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert!(
                    out.iter()
                        .map(|x| x.to_bits())
                        .eq(saved.iter().map(|x| x.to_bits())),
                    "'{}' equals the checkpoint",
                    t_out.name
                );
                assert_ne!(
                    out,
                    koala_graph::tensor::to_f32(t_in).unwrap(),
                    "'{}' was trained",
                    t_out.name
                );
                trained += 1;
            }
            Err(_) => assert_eq!(
                out,
                koala_graph::tensor::to_f32(t_in).unwrap(),
                "untrained '{}' is unchanged",
                t_out.name
            ),
        }
    }
    assert_eq!(
        trained, 9,
        "tiny_cnn has 9 trainable initializers (case.json)"
    );
}

/// The exported file on its own, in a fresh session, at batch 7 (training
/// used 4): rows agree with batches of 4 and 3 over the same images, so the
/// batch axis is truly free. Different batch sizes may change ORT's GEMM
/// blocking, hence a rounding-level bound (1e-6 on O(1) logits) rather
/// than equality.
fn assert_runs_at_other_batch_sizes(path: &Path) {
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..SessionOptions::default()
    };
    let mut s = Session::from_file(path, &opts).unwrap();
    let x = inputs(7);
    let all = logits(&mut s, &x, 7);
    assert_eq!(all.len(), 70);
    let per = 3 * 16 * 16;
    let head = logits(&mut s, &x[..4 * per], 4);
    let tail = logits(&mut s, &x[4 * per..], 3);
    let joined: Vec<f32> = head.into_iter().chain(tail).collect();
    let d = max_abs_diff(&all, &joined);
    eprintln!("exported model, batch 7 vs batches 4+3: max |Δ| {d:e}");
    assert!(d <= 1e-6, "batch 7 vs 4+3: max |Δ| {d:e}");
    assert!(all.iter().all(|v| v.is_finite()));
}

/// `export` pointing at the input model is refused before any training, and
/// the input file keeps its bytes.
#[test]
fn export_never_overwrites_the_input_model() {
    let (tmp, data) = scratch_with_data(4);
    let input_path = tmp.path().join("model.onnx");
    std::fs::copy(tiny_model(), &input_path).unwrap();
    let before = std::fs::read(&input_path).unwrap();
    let run = tmp.path().join("run");
    let cfg = koala_train::TrainConfig {
        model: input_path.clone(),
        max_steps: Some(2),
        export: Some(input_path.clone()),
        ..fast_config(&data, &run)
    };
    let err = format!("{:#}", koala_train::finetune(cfg).unwrap_err());
    assert!(
        err.contains("overwrite") && err.contains("model.onnx"),
        "error says why and names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&input_path).unwrap(),
        before,
        "the input model is unchanged"
    );
    assert!(
        koala_train::checkpoint::list(&run).unwrap().is_empty(),
        "refused before training"
    );

    // The default export path (<run_dir>/model.onnx) is the input too when a
    // run directory holds the model being fine-tuned.
    let cfg = koala_train::TrainConfig {
        model: input_path.clone(),
        max_steps: Some(2),
        ..fast_config(&data, tmp.path())
    };
    let err = format!("{:#}", koala_train::finetune(cfg).unwrap_err());
    assert!(err.contains("overwrite"), "{err}");
    assert_eq!(std::fs::read(&input_path).unwrap(), before);
}

/// `export_checkpoint` writes a chosen checkpoint's weights and refuses the
/// input path as output.
#[test]
fn export_checkpoint_writes_the_chosen_step() {
    let (tmp, data) = scratch_with_data(8);
    let run = tmp.path().join("run");
    let cfg = koala_train::TrainConfig {
        max_steps: Some(4),
        checkpoint_every: Some(2),
        keep_checkpoints: 5,
        ..fast_config(&data, &run)
    };
    koala_train::finetune(cfg).unwrap();
    let out = tmp.path().join("step2.onnx");
    koala_train::trainer::export_checkpoint(&run, Some(2), &out).unwrap();
    let input = Model::load(&tiny_model()).unwrap();
    assert_weights_are_the_checkpoints(&input, &Model::load(&out).unwrap(), &run, 2);
    let err = format!(
        "{:#}",
        koala_train::trainer::export_checkpoint(&run, Some(3), &out).unwrap_err()
    );
    assert!(
        err.contains("step 3") && err.contains("[2, 4]"),
        "names the missing step and the ones there are: {err}"
    );
    let err = format!(
        "{:#}",
        koala_train::trainer::export_checkpoint(&run, None, &tiny_model()).unwrap_err()
    );
    assert!(err.contains("overwrite"), "{err}");
}
