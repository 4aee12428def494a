"""docs/operations.md names only what exists: settings, commands and options, metrics and their labels (in
the metrics table and in every alert expression), deploy/ files, and the example's figures as deploy/
and the code have them. An operator copies these into dashboards and runbooks; a name that drifted would
fail silently there (an alert on a series that does not exist never fires)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from cds_service import cli, observability, serving
from cds_service.config import KNOWN_VARIABLES
from tests.deploy.manifests import DEPLOY, find, quantity, service_container

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS_MD = ROOT / "docs" / "operations.md"
# Series from kube-state-metrics, which the alerts use for pod readiness and restarts.
EXTERNAL_PREFIXES = ("kube_",)


@functools.cache
def doc() -> str:
    """docs/operations.md, read when a test first asks (not when pytest imports the module)."""
    return OPERATIONS_MD.read_text()


def section(title: str) -> str:
    text = doc()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each Markdown table row, header and rule rows left out."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:] if rows else rows


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name /metrics can show, with its metric's type and label names."""
    metrics = observability._Metrics()
    series: dict[str, tuple[str, set[str]]] = {}
    for value in vars(metrics).values():
        kind = getattr(value, "_type", None)
        if kind == "counter":
            series[f"{value._name}_total"] = ("counter", set(value._labelnames))
        elif kind == "histogram":
            series[value._name] = ("histogram", set(value._labelnames))
            for suffix in ("_count", "_sum"):
                series[value._name + suffix] = ("histogram", set(value._labelnames))
            series[f"{value._name}_bucket"] = ("histogram", {*value._labelnames, "le"})
    return series


def test_the_settings_table_lists_every_setting_and_no_other() -> None:
    listed = [re.fullmatch(r"`(CDS_[A-Z_]+)`", row[0]) for row in table_rows(section("Configuration"))]
    assert sorted(m[1] for m in listed if m) == sorted(KNOWN_VARIABLES)
    assert set(re.findall(r"\bCDS_[A-Z_]+\b", doc())) <= set(KNOWN_VARIABLES)


def test_every_command_and_serve_option_named_exists() -> None:
    for command in re.findall(r"`cds-service ([a-z][a-z-]*)", doc()):
        assert command in cli._COMMANDS, f"cds-service {command}"
    options = {opt for param in serving.serve.params for opt in param.opts}
    for span in re.findall(r"`cds-service serve([^`]*)`", doc()):
        for option in re.findall(r"--[a-z-]+", span):
            assert option in options, f"cds-service serve {option}"


def test_the_metrics_table_matches_what_the_service_exports() -> None:
    series = exported()
    rows = table_rows(section("Metrics"))
    documented = {}
    for name_cell, type_cell, labels_cell in rows:
        name = name_cell.strip("`")
        documented[name] = (type_cell.split()[0], set(re.findall(r"`(\w+)`", labels_cell.split("(")[0])))
    families = {
        name: found for name, found in series.items() if not name.endswith(("_count", "_sum", "_bucket"))
    }
    assert documented == families


def test_every_alert_names_series_and_labels_that_exist() -> None:
    """A label in a matcher or a `by (...)` must be one the series has: PromQL accepts any name and the
    alert would silently never fire."""
    series = exported()
    wrong = []
    for alert, expression, *_ in table_rows(section("What to alert on")):
        used = re.findall(r"\b([a-z_]+)(\{[^}]*\})?\[", expression) + re.findall(
            r"\b([a-z_]+)(\{[^}]*\})", expression
        )
        for name, matchers in used:
            if name.startswith(EXTERNAL_PREFIXES):
                continue
            if name not in series:
                wrong.append(f"{alert}: {name} is not exported")
                continue
            labels = re.findall(r"(\w+)\s*=~?", matchers)
            for grouping in re.findall(r"by \(([^)]*)\)", expression):
                labels += [part.strip() for part in grouping.split(",")]
            missing = [label for label in labels if label not in series[name][1]]
            wrong += [f"{alert}: {name} has no label {label}" for label in missing]
    assert not wrong, sorted(set(wrong))


def test_every_alert_names_at_least_one_series() -> None:
    for row in table_rows(section("What to alert on")):
        assert re.search(r"\b(cds|kube)_[a-z_]+", row[1]) or "log" in row[1], row[0]


def test_every_deploy_file_named_exists() -> None:
    for name in re.findall(r"deploy/([\w.-]+)", doc()):
        assert (DEPLOY / name).is_file(), f"deploy/{name}"
    for name in re.findall(r"`([\w-]+\.(?:yaml|env|json|sql))`", doc()):
        if name not in ("image-constraints.txt",) and not name.startswith("clients."):
            assert (DEPLOY / name).is_file(), name


def _args_value(args: list[Any], option: str) -> str:
    return str(args[args.index(option) + 1])


def test_the_figures_quoted_for_the_example_are_the_examples() -> None:
    """Stopping, scaling and memory figures the text quotes, as deploy/ and the code set them."""
    pod = find("Deployment", "cds-service")["spec"]["template"]["spec"]
    hpa = find("HorizontalPodAutoscaler", "cds-service")["spec"]
    prestop = service_container()["lifecycle"]["preStop"]["exec"]["command"][1]
    redis = find("Deployment", "cds-redis")["spec"]["template"]["spec"]["containers"][0]
    memory_limit = quantity(service_container()["resources"]["limits"]["memory"]) / 2**20
    expected = [
        f"gives {pod['terminationGracePeriodSeconds']} s: `terminationGracePeriodSeconds`",
        f"{hpa['minReplicas']}–{hpa['maxReplicas']} replicas at "
        f"{hpa['metrics'][0]['resource']['target']['averageUtilization']} % CPU",
        f"after a {prestop} s `preStop` pause",
        f"gunicorn's {serving.GRACEFUL_TIMEOUT_SECONDS} s graceful timeout",
        f"| graceful timeout | {serving.GRACEFUL_TIMEOUT_SECONDS} s |",
        f"the example's {memory_limit:.0f} MiB limit",
        f"example's {_args_value(redis['args'], '--maxmemory').removesuffix('mb')} MB (`maxmemory`",
        f"container's {quantity(redis['resources']['limits']['memory']) / 2**20:.0f} MiB limit",
    ]
    for text in expected:
        assert " ".join(text.split()) in " ".join(doc().split()), text
