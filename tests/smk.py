"""Run the workflow through Snakemake's Python API and report which jobs it would run / ran."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from snakemake.api import SnakemakeApi
from snakemake.logging import logger as smk_logger
from snakemake.settings.types import (ConfigSettings, DAGSettings, ExecutionSettings, OutputSettings,
                                      ResourceSettings, StorageSettings)
from snakemake_interface_logger_plugins.common import LogEvent


class _JobCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.rules: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == LogEvent.JOB_INFO:
            self.rules.append(record.rule_name)


def run(repo: Path, targets: list[str], config: dict[str, Any] | None = None, dryrun: bool = True,
        cores: int = 2, workdir: Path | None = None) -> list[str]:
    """Run (or dry-run) ``targets``; return the rule name of every scheduled job."""
    collector = _JobCollector()
    try:
        with SnakemakeApi(OutputSettings(dryrun=dryrun, quiet=set(), show_failed_logs=True)) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(cores=cores),
                config_settings=ConfigSettings(config=config or {}),
                storage_settings=StorageSettings(),
                snakefile=repo / "Snakefile",
                workdir=workdir or repo,
            )
            dag = wf.dag(DAGSettings(targets=set(targets)))
            # Snakemake sets up its logger inside the API calls; attach our collector afterwards.
            smk_logger.addHandler(collector)
            dag.execute_workflow(pseudo_executor="dryrun" if dryrun else None,
                                 execution_settings=ExecutionSettings(keep_incomplete=False))
    finally:
        smk_logger.removeHandler(collector)
    return collector.rules
