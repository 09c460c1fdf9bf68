"""The ``ainode`` command: serve, check-config, status."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from node.config import ConfigError, NodeConfig, default_config_path, load_config
from node.logs import configure_logging

__all__ = ["main"]

logger = logging.getLogger("ainode")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $AINODE_CONFIG, else ./config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="ainode", description="A DICOM-native AI node beside your PACS."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the DICOM listener and scheduler")
    sub.add_parser("check-config", parents=[common], help="validate the config file and exit")
    sub.add_parser("status", parents=[common], help="studies, completion and jobs at a glance")
    return parser


def _cmd_serve(cfg: NodeConfig) -> int:
    from node.service import ServeError, serve

    configure_logging(cfg.logging)
    try:
        return serve(cfg)
    except ServeError as exc:
        logger.error("%s", exc)
        return 1


def _cmd_status(cfg: NodeConfig) -> int:
    from node.report import status_report
    from storage.db import create_sqlite_engine, make_sessionmaker, migrate

    if not cfg.storage.database_path.exists():
        print(f"no database yet at {cfg.storage.database_path}: the node has not run")
        return 0
    engine = create_sqlite_engine(cfg.storage.database_path)
    migrate(engine)
    print(status_report(make_sessionmaker(engine)))
    engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print(f"ainode: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{cfg.path}: OK ({len(cfg.peers)} peer(s), {len(cfg.pipelines)} pipeline(s))")
        return 0
    if args.command == "status":
        return _cmd_status(cfg)
    return _cmd_serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
