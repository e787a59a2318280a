"""``aligngate eval``: offline pairwise evaluation of the arms (does rewriting or correcting make answers better?).

The layers, bottom up, each a module with its own contract:

* :mod:`gateway.eval.records` — the dataclasses passed between the layers (prompts, answers, judgements) and
  their JSONL form;
* :mod:`gateway.eval.config` — the ``EVAL.yaml`` dataclasses (loaded with ``core.recipe``) and their checks;
* :mod:`gateway.eval.prompts` — prompt sets: the bundled ones (``dolly-eval``, ``hh-rlhf-harmless``) and JSONL;
* :mod:`gateway.eval.cache` — the append-only answer and judgement files of the output folder (resume);
* :mod:`gateway.eval.targets` — what answers: a running gateway, an in-process one, or two sides (models or
  gateway arms);
* :mod:`gateway.eval.verdicts`, :mod:`gateway.eval.llm_judge`, :mod:`gateway.eval.rm_judge` — the judges;
* :mod:`gateway.eval.measures` — what needs no judge (length, refusals, aligner edits, rewrites, latency);
* :mod:`gateway.eval.runner` — generation and judging with bounded concurrency, cache reuse and progress;
* :mod:`gateway.eval.report` — ``report.md``, ``report.png`` and the headline JSON;
* :mod:`gateway.eval.shadow` — ``--from-store``: the served answer against the shadow correction;
* :mod:`gateway.eval.command` — the command itself (exit codes, messages).

Nothing here is imported by ``aligngate serve``; torch is imported only by the reward-model judge.
"""
