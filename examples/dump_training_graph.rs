//! Writes the training graph of an ONNX model to a file, to inspect it (e.g.
//! in Netron) or profile it with another runtime.
//! `cargo run --example dump_training_graph -- <model.onnx> <batch> <size> <out.onnx> [unfold] [constants] [keep-bn] [portable]`

use prost::Message;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() >= 5,
        "usage: dump_training_graph <model.onnx> <batch> <size> <out.onnx> [unfold] [constants]"
    );
    let m = koala::graph::Model::load(std::path::Path::new(&a[1]))?;
    let (b, s): (usize, usize) = (a[2].parse()?, a[3].parse()?);
    let input = m.graph().input[0].name.clone();
    let mut spec = koala::graph::TrainingSpec {
        input_shapes: [(input, vec![b, 3, s, s])].into_iter().collect(),
        probe_threads: 2,
        ..Default::default()
    };
    for flag in &a[5..] {
        match flag.as_str() {
            "unfold" => {
                spec.backward.conv_weight_grad = koala::graph::ConvWeightGrad::UnfoldDepthwise
            }
            "constants" => spec.trainable.train_constants = true,
            f if f.starts_with("train=") => spec.trainable.include = Some(f[6..].to_string()),
            f if f.starts_with("freeze=") => spec.trainable.exclude = Some(f[7..].to_string()),
            "keep-bn" => spec.backward.keep_batchnorm = true,
            "portable" => spec.backward.target = koala::graph::ExecutionTarget::Portable,
            other => anyhow::bail!("unknown flag '{other}' (unfold, constants, keep-bn, portable, train=<regex>, freeze=<regex>)"),
        }
    }
    let g = koala::graph::build(&m, &spec)?;
    std::fs::write(&a[4], g.proto.encode_to_vec())?;
    println!(
        "{} nodes, target {:?}, blocked-kernel pass: {:?}",
        g.proto.graph.as_ref().map_or(0, |g| g.node.len()),
        g.target,
        g.nchwc
    );
    Ok(())
}
