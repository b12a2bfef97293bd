from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from pathlib import Path

    from model.report import run_report

    exps = snakemake.params.experiments
    run_report(
        eval_dirs={e: str(Path(m).parent) for e, m in zip(exps, snakemake.input.metrics)},
        train_logs={e: [p for p in snakemake.input.train_logs if f"/train/{e}/" in p] for e in exps},
        out_html=snakemake.output[0],
        qc_figures=list(snakemake.input.qc_figures),
    )
