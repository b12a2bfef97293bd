"""What every rule's entry script shares: its log file and a clean failure.

Usage in an entry script (run by Snakemake's ``script:`` directive, which defines ``snakemake``)::

    from workflow_scripts.entry._run import rule_logging
    with rule_logging(snakemake):
        ...
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Iterator


@contextlib.contextmanager
def rule_logging(smk: Any) -> Iterator[logging.Logger]:
    """Send logging and stderr (tqdm progress bars) of this job to its ``log:`` file."""
    log_file = smk.log[0] if len(smk.log) else None
    stream = open(log_file, "w", buffering=1) if log_file else sys.stderr
    old_stderr = sys.stderr
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(f"rule.{smk.rule}")
    log.info("rule %s wildcards=%s", smk.rule, dict(smk.wildcards.items()))
    log.info("params=%s", dict(smk.params.items()))
    start = time.time()
    try:
        yield log
        log.info("done in %.1f s", time.time() - start)
    except BaseException:
        log.exception("rule %s failed", smk.rule)
        raise
    finally:
        sys.stderr = old_stderr
        if log_file:
            stream.close()
