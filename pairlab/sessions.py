"""Opening what a command works on: the workspace, the settings from the flags and the
workspace's config, and the Session (the one way one is made, for the engine process and the
tests alike)."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def open_workspace(directory: Path | None):
    """The workspace at `directory` (default: the default one), created on first use."""
    from engine.workspace import WorkspaceError, open_or_init
    try:
        return open_or_init(directory)
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc


def existing_workspace(directory: Path | None):
    from engine.workspace import Workspace, WorkspaceError, default_workspace_dir
    try:
        return Workspace.open(directory or default_workspace_dir())
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc


def settings_from_args(args, config):
    """SessionSettings from the loop flags, the workspace's config filling the rest."""
    from engine.session import SessionSettings
    if args.slots is not None and args.slots < 1:
        raise UserError(f"--slots must be at least 1, not {args.slots}")
    return SessionSettings(
        mode=args.mode or config.mode,
        budget_s=(args.budget if args.budget is not None
                  else config.training_budget(args.device)),
        max_experiments=args.max_experiments, max_cost=args.max_cost,
        max_hours=args.max_hours,
        drafts_ahead=args.drafts_ahead if args.drafts_ahead is not None else config.drafts_ahead,
        noise_repeats=(args.noise_repeats if args.noise_repeats is not None
                       else config.noise_repeats),
        device=args.device or config.device,
        speculate=config.speculate if args.speculate is None else args.speculate,
        slots=args.slots if args.slots is not None else config.slots,
        keep_rule=config.keep_rule,
        **executor_settings(args, config))


def executor_settings(args, config) -> dict:
    """The executor flags (the workspace's config filling the rest) as SessionSettings
    fields; UserError for a mistake in them, or for the Ray executor without Ray."""
    executor = args.executor or config.executor
    values = {"--ray-address": args.ray_address or config.ray_address,
              "--ray-resources": args.ray_resources or config.ray_resources,
              "--ray-data-dir": args.ray_data_dir or config.ray_data_dir}
    if executor != "ray":
        given = [flag for flag in values if getattr(args, flag[2:].replace("-", "_"))]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UserError(f"{', '.join(given)} {verb} with --executor ray")
        return {}
    from engine.scale import ray_executor
    try:
        ray_executor.import_ray()
        resources = (ray_executor.parse_resources(values["--ray-resources"])
                     if values["--ray-resources"] else None)
    except (ray_executor.RayUnavailable, ValueError) as exc:
        raise UserError(str(exc)) from exc
    data_dir = values["--ray-data-dir"]
    return {"executor": "ray", "ray_address": values["--ray-address"],
            "ray_resources": resources, "ray_data_dir": Path(data_dir) if data_dir else None}


def make_session(workspace, agent_name: str, settings, model: str | None = None,
                 monitor: bool = True):
    """The one way a Session is opened: the engine process and the tests both come here."""
    from engine.agents import make_agent
    from engine.session import Session
    agent = make_agent(agent_name, device=settings.device or "cpu", model=model)
    return Session(workspace, agent, settings, monitor=monitor)
