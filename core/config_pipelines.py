"""``[[pipelines]]`` of config.toml: match rules, models, outputs, recommendations."""

from __future__ import annotations

import re
from pathlib import Path

from core.config import FleischnerConfig, PipelineConfig, Recommendation, SeriesRule
from core.config_rules import NAME_RE, ConfigError, array_of_tables, config_table, short_text

__all__ = ["parse_pipelines"]


def _series_rule(raw: object, name: str) -> SeriesRule:
    table = config_table(raw or {}, name)
    pattern = table.string("series_description", "")
    try:
        compiled = re.compile(pattern, re.IGNORECASE) if pattern else None
    except re.error as exc:
        raise ConfigError(
            f"{table.key('series_description')}: not a valid regular expression: {exc}"
        ) from None
    rule = SeriesRule(
        modalities=tuple(m.upper() for m in table.strings("modality")),
        body_parts=tuple(b.upper() for b in table.strings("body_part")),
        series_description=compiled,
        sop_classes=table.strings("sop_class"),
        min_instances=table.integer("min_instances", 1, 1),
        axial_only=table.boolean("axial_only", False),
    )
    table.finish()
    return rule


def parse_pipelines(raw: object, base: Path) -> tuple[PipelineConfig, ...]:
    pipelines: list[PipelineConfig] = []
    for table in array_of_tables(raw, "pipelines"):
        name = table.string("name", "")
        if not NAME_RE.match(name):
            raise ConfigError(
                f"{table.key('name')}: is required: letters, digits, '_', '-', '.', "
                f"at most 64 characters (got {name!r})"
            )
        if any(p.name == name for p in pipelines):
            raise ConfigError(f"{table.key('name')}: must be unique ({name!r} repeats)")
        models = []
        for model in table.strings("models"):
            path = Path(model).expanduser()
            path = path if path.is_absolute() else base / path
            if not (
                (path / "model.toml").is_file() or (path / "configs" / "metadata.json").is_file()
            ):
                raise ConfigError(
                    f"{table.key('models')}: {path} is not a model package "
                    "(no model.toml, and no configs/metadata.json of a MONAI bundle)"
                )
            models.append(path)
        pipelines.append(
            PipelineConfig(
                name=name,
                priority=table.integer("priority", 100, 0, 1000),
                match=_series_rule(table.raw("match"), f"{table.key('match')}"),
                models=tuple(models),
                shadow=table.boolean("shadow", False),
                destinations=table.strings("destinations"),
                series_number=table.integer("series_number", 900, 1, 2**31 - 3),
                series_description=short_text(table, "series_description", 48),
                recommendations=_recommendations(
                    table.raw("recommendations"), table.key("recommendations")
                ),
                domain_check=table.boolean("domain_check", True),
                fleischner=_fleischner(table.raw("fleischner"), table.key("fleischner")),
                report_declined=table.boolean("report_declined", False),
                priors_from=table.strings("priors_from"),
            )
        )
        table.finish()
    return tuple(pipelines)


def _code(value: object, key: str) -> tuple[str, str, str]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ConfigError(
            f'{key}: must be [value, scheme, meaning], e.g. ["103693007", "SCT", "Biopsy"]'
        )
    return (value[0], value[1], value[2])


def _recommendations(raw: object, name: str) -> tuple[Recommendation, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table of finding = {{ code = [...], text = ... }}")
    found = []
    for finding, item in raw.items():
        table = config_table(item, f"{name}.{finding}")
        code = _code(table.raw("code"), table.key("code"))
        text = short_text(table, "text", 1024)
        table.finish()
        found.append(Recommendation(finding=finding, code=code, text=text))
    return tuple(found)


def _fleischner(raw: object, name: str) -> FleischnerConfig | None:
    if raw is None:
        return None
    table = config_table(raw, name)
    labels = table.strings("labels")
    if not labels:
        raise ConfigError(f"{table.key('labels')}: is required: the segmentation labels of nodules")
    risk = table.string("risk", "unknown")
    if risk not in ("low", "high", "unknown"):
        raise ConfigError(f"{table.key('risk')}: must be low, high or unknown (got {risk!r})")
    table.finish()
    return FleischnerConfig(labels=labels, risk=risk)
