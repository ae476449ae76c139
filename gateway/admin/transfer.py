"""Export and import of the whole configuration (``GET``/``PUT /config``).

Export is the configuration **as the file states it** (``ConfigStore.file_config``: runtime
overrides such as the environment admin token are not part of it), rendered by the store's own
serializer (:func:`gateway.config.store.dump_config` / :func:`~gateway.config.store.to_yaml`), so
an export is exactly what the gateway would save. Secrets are ``********`` unless asked for.

Import parses YAML or JSON with the config loader, so problems carry the file's line numbers, and
recognises the old single-server shapes (:mod:`gateway.config.migrate`), converting them in
memory (nothing is written beside the running file: the imported text is the client's). Masked
secrets are restored from the running configuration inside the store's lock, then
:func:`gateway.admin.changes.import_config` combines the file with the running configuration.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from gateway.admin.problems import BadRequest, FieldError, Invalid, is_secret_location, safe_value
from gateway.admin.redaction import restore_masked
from gateway.config.loader import ConfigError, parse_document, validate_document, validate_mapping
from gateway.config.migrate import convert_document, detect_legacy_shape
from gateway.config.models import GatewayConfig
from gateway.config.store import dump_config, to_yaml
from gateway.config.yaml_io import YamlDocument

SOURCE = "imported file"
EXPORT_NOTES = (
    "comfyui-gateway configuration export.",
    "Secrets shown as '********' are masked: importing this file keeps the current ones.",
)


def export_text(config: GatewayConfig, *, fmt: str, include_secrets: bool) -> str:
    """Render ``config`` as YAML or JSON text."""
    if fmt == "json":
        data = dump_config(config, include_secrets=include_secrets)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    notes = EXPORT_NOTES[:1] if include_secrets else EXPORT_NOTES
    return to_yaml(config, include_secrets=include_secrets, header=False, notes=notes)


@dataclass(frozen=True)
class Imported:
    """A parsed, validated import: current-shape data plus what it came from."""

    data: dict[str, Any]
    """Current-shape mapping (converted when the file was in an old shape)."""
    migrated_from: str | None
    """The old shape found, or None."""


def _value(shown: str | None) -> Any:
    """Return the loader's displayed value (a ``repr``) as the value itself, when it is one."""
    if shown is None:
        return None
    try:
        return ast.literal_eval(shown)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return shown


def config_errors(exc: ConfigError) -> list[FieldError]:
    """Return the loader's located problems as field errors (line numbers kept)."""
    return [
        FieldError(
            location=p.location,
            message=p.message,
            value=safe_value(_value(p.value), secret=is_secret_location(p.location)),
            line=p.line,
        )
        for p in exc.problems
    ]


def parse_import(text: str, *, json_body: bool, current: GatewayConfig) -> Imported:
    """Parse and validate an imported document; 400 for syntax, 422 for content problems.

    ``json_body``: the client declared JSON (parsed strictly, JSON error messages); otherwise
    YAML, which also accepts JSON. Masked secrets are checked against ``current`` (they are
    restored again, from the configuration in force then, by :func:`resolve_import`).
    """
    if json_body:
        try:
            doc = YamlDocument(data=json.loads(text))
        except ValueError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
    else:
        try:
            doc = parse_document(text, SOURCE)
        except ConfigError as exc:
            raise BadRequest(f"malformed YAML: {exc}", errors=config_errors(exc)) from None
    try:
        shape = detect_legacy_shape(doc.data)
        if shape is not None:
            converted = convert_document(doc, SOURCE)
            return Imported(dict(converted.conversion.data), shape)
        data = doc.data
        if isinstance(data, dict):  # a webhook URL is validated: "********" must be resolved
            data = restore_masked(data, current.model_dump(mode="python"))
        validate_document(YamlDocument(data, doc.lines, doc.duplicate_keys), SOURCE)
    except ConfigError as exc:
        errors = config_errors(exc)
        raise Invalid(f"the imported file has {len(errors)} problem(s)", errors=errors) from None
    return Imported(dict(doc.data), None)


def resolve_import(imported: Imported, current: GatewayConfig) -> GatewayConfig:
    """Restore masked secrets from ``current`` and validate (called under the store's lock)."""
    data = restore_masked(imported.data, current.model_dump(mode="python"))
    try:
        return validate_mapping(data, SOURCE)
    except ConfigError as exc:
        errors = config_errors(exc)
        raise Invalid(f"the imported file has {len(errors)} problem(s)", errors=errors) from None
