"""``skyloop control ACTION``: an operator's control event, emitted to the running pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processors.cli.common import add_common, live_bootstrap, run_dir, settings
from processors.core.durations import duration_seconds
from processors.core.exceptions import ConfigError, SkyloopError

if TYPE_CHECKING:
    from processors.core.records import ControlEventRecord

__all__ = ["add_parsers", "cmd_control"]


def cmd_control(args: argparse.Namespace) -> int:
    """Build the action's event against the log read to its end, produce it, and wait until
    the log holds it (so a following command sees it)."""
    from processors.core.kafka import ControlFollower, make_producer, produce_control_event
    from processors.operator import OperatorRequest, operator_event

    resolved = settings(args)
    if resolved.kafka.bootstrap_servers is not None:
        bootstrap = resolved.kafka.bootstrap_servers
        artifacts = resolved.artifacts_dir
    else:
        bootstrap, prefix = live_bootstrap(args)
        resolved = resolved.model_copy(update={"topic_prefix": prefix})
        artifacts = run_dir(args) / "artifacts"
    request = OperatorRequest(
        action=args.action,
        source=getattr(args, "source", None),
        value=getattr(args, "value", None),
        detector=getattr(args, "detector", None),
        model=getattr(args, "model", None),
        reason=args.reason,
        duration_s=duration_seconds(args.duration) if getattr(args, "duration", None) else None,
        weights=tuple(getattr(args, "pairs", None) or ()),
        force=args.force,
    )
    follower = ControlFollower(resolved, bootstrap).start()
    try:
        if not follower.wait_caught_up(timeout_s=30):
            raise SkyloopError("could not read control.events to its end within 30 s")
        if args.action == "register":
            event = _registration(args, resolved, follower.state, artifacts)
        else:
            event = operator_event(request, follower.state)
        producer = make_producer(resolved, bootstrap, **{"linger.ms": 0})
        produce_control_event(producer, resolved, event)
        follower.wait_until(lambda _s: follower.has_event(event["event_id"]), timeout_s=10)
    finally:
        follower.close()
    print(
        f"emitted {event['type']} for {event['subject']} (event {event['event_id']}, "
        f"issued by {event['issued_by']})"
    )
    return 0


def _registration(
    args: argparse.Namespace, settings: Any, state: Any, artifacts: Path
) -> ControlEventRecord:
    """Store the weights and a model card, and build the ``model.registered`` event."""
    from processors.core.artifacts import ArtifactStore
    from processors.core.registry import ModelCard, code_version, register
    from processors.operator import check_new_version, operator_name

    version = check_new_version(args.model, state)
    weights: Path = args.weights
    if not weights.is_file():
        raise ConfigError(f"--weights {weights}: no such file")
    store = ArtifactStore(artifacts)
    card = ModelCard(
        version=version,
        kind=args.kind,
        weights=store.put_bytes(weights.read_bytes()),
        backbone=(args.backbone or settings.score.backbone) if args.kind == "scorer" else None,
        parent=args.parent,
        code=code_version(),
        notes=args.reason,
    )
    return register(store, card, operator_name())


def add_parsers(sub: Any) -> None:
    """The ``control`` subcommand and its actions."""
    control = sub.add_parser(
        "control",
        help=(
            "emit an operator's control event (pause, resume, threshold, recalibrate, revise, "
            "weights, register, promote, rollback)"
        ),
        description=(
            "Emit a control event to the running pipeline (the latest local run, or "
            "SKYLOOP_BOOTSTRAP_SERVERS); every processor folds it like the controller's own."
        ),
    )
    actions = control.add_subparsers(dest="action", required=True)

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=helptext)
        add_common(p)
        p.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
        p.add_argument("--reason", help="why (kept in the event)")
        p.add_argument(
            "--force", action="store_true", help="accept a source the log has not mentioned yet"
        )
        p.set_defaults(func=cmd_control)
        return p

    pause = action("pause", "pause the pipeline (or one source with --source)")
    pause.add_argument("--source", help="pause only this source's ingestion")
    pause.add_argument("--for", dest="duration", help="lift after this long (30s, 10m, 2h)")
    resume = action("resume", "resume the pipeline (or one source with --source)")
    resume.add_argument("--source", help="resume only this source")
    threshold = action("threshold", "set a source's threshold (calibrated score in (0, 1])")
    threshold.add_argument("source")
    threshold.add_argument("value", type=float)
    threshold.add_argument("--detector", help="one detector only (default: all three)")
    threshold.add_argument("--model", help="one model version only (default: whatever serves)")
    recalibrate = action("recalibrate", "recalibrate a source from its most recent images")
    recalibrate.add_argument("source")
    revise = action(
        "revise",
        "the source's stream has ended: revise now the decisions since its last drift, "
        "without waiting for a score under the recalibration",
    )
    revise.add_argument("source")
    weights = action("weights", "set the sources' shares of ingestion (SOURCE=WEIGHT ...)")
    weights.add_argument("pairs", nargs="+", metavar="SOURCE=WEIGHT")
    register = action("register", "register a model version (gate, shadow, canary follow)")
    register.add_argument("model", metavar="VERSION", help="a new, unique version name")
    register.add_argument("--weights", type=Path, required=True, help="weights file")
    register.add_argument("--kind", choices=("scorer", "detector"), default="scorer")
    register.add_argument("--backbone", help="scorer: timm model name (default: the setting)")
    register.add_argument("--parent", help="the version this one derives from")
    for name, helptext in (
        ("promote", "promote a gated model version to production now"),
        ("rollback", "take a model version out of canary/shadow, or production back"),
    ):
        action(name, helptext).add_argument("model", metavar="VERSION")
