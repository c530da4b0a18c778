"""cxr-score --engine local|ray: the options, their checks, the connection to a cluster (cxr.runtime.ray_engine).

Kept out of cxr/cli/score.py so the command only wires the options and takes one branch; Ray is imported only when
--engine ray is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOption:
    """--engine and the Ray options that go with it."""

    name: str = "local"
    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0

    @property
    def ray(self) -> bool:
        return self.name == "ray"

    def check(self, device: str, overlays, report) -> None:
        """Usage errors (exit 2) before anything is loaded: Ray options without --engine ray, a device the actors
        cannot honour, outputs the Ray engine does not produce, and a missing `ray` extra."""
        if not self.ray:
            given = [name for name, value, default in (("--ray-address", self.address, None),
                                                       ("--actors", self.actors, 1),
                                                       ("--gpus-per-actor", self.gpus_per_actor, 0.0))
                     if value != default]
            if given:
                raise click.UsageError(f"{', '.join(given)} only apply with --engine ray")
            return
        if device == "cuda" and self.gpus_per_actor <= 0:
            raise click.UsageError("--engine ray --device cuda needs --gpus-per-actor (e.g. 1): Ray gives an actor "
                                   "a GPU only when it asks for one")
        if device == "cpu" and self.gpus_per_actor > 0:
            raise click.UsageError("--gpus-per-actor with --device cpu would hold GPUs the actors never use")
        if overlays is not None or report is not None:
            raise click.UsageError("--overlays and --report need --engine local (the Ray engine returns rows, not "
                                   "activation maps)")
        from cxr.runtime.ray_engine import RayMissing, import_ray

        try:
            import_ray()
        except RayMissing as exc:
            raise click.UsageError(str(exc)) from None

    def connect(self):
        """A RayRun for --engine ray (RayEngineError when the cluster cannot be reached), None for local."""
        if not self.ray:
            return None
        from cxr.runtime.ray_engine import RayOptions, RayRun

        return RayRun.connect(RayOptions(address=self.address, actors=self.actors,
                                         gpus_per_actor=self.gpus_per_actor))


def engine_manifest(run) -> dict:
    """The manifest's `engine` entry: which engine ran, and for Ray the cluster, the pool and rows per actor."""
    return {"name": "local"} if run is None else run.manifest()
