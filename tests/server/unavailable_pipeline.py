"""``test.unavailable``: installed but unable to run here (for the server's tests)."""

from dataclasses import dataclass

from pipelines.base import Pipeline


@dataclass
class Params:
    pass


def run(inputs, params, job, models):
    raise AssertionError("an unavailable pipeline must never run")


PIPELINE = Pipeline(name="test.unavailable", summary="never available", params=Params,
                    inputs={}, outputs={}, run=run,
                    probe=lambda: (False, "weights missing: put model.safetensors in /nowhere"))
