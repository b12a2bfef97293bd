# Evaluation (3D correctness where ground truth exists) and the HTML report.


rule evaluate:
    input:
        checkpoint="results/train/{experiment}/mouse/checkpoint.pt",
        synthetic=synthetic_shards("test"),
        real=all_real_shards(),
        ground_truth=demo_ground_truth(),
    output:
        metrics="results/eval/{experiment}/metrics.json",
        per_view="results/eval/{experiment}/per_view.csv",
    params:
        evaluate=config["evaluate"],
        train=lambda w: experiment_settings(w.experiment, "train_mouse"),
        out_dir=lambda w: f"results/eval/{w.experiment}",
    log:
        log_path("evaluate", "{experiment}"),
    benchmark:
        bench_path("evaluate", "{experiment}")
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/entry/evaluate.py"


rule report:
    input:
        metrics=expand("results/eval/{experiment}/metrics.json", experiment=experiments()),
        train_logs=train_logs(),
        qc_figures=expand("results/locate/{session}/qc.png", session=list(sessions()))
        + [s.replace(".h5", "_qc.png") for s in all_real_shards()],
    output:
        report("results/report.html", category="Report", caption="../docs/report/report.rst"),
    params:
        experiments=experiments(),
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/entry/report.py"
