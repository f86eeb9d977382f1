"""`gpufleet dashboards build --out DIR`: dashboards JSON and Grafana provisioning files.

    DIR/dashboards/gpufleet-fleet.json ... gpufleet-node.json    the four dashboards
    DIR/provisioning/datasources/gpufleet.yaml                    InfluxDB (InfluxQL), uid gpufleet-influxdb
    DIR/provisioning/dashboards/gpufleet.yaml                     a file provider for DIR/dashboards
    DIR/provisioning/alerting/gpufleet.yaml                       the paging alert rules

Copy DIR/provisioning/* into Grafana's provisioning folder (/etc/grafana/provisioning) and set
GPUFLEET_INFLUX_URL (and GPUFLEET_INFLUX_USER / GPUFLEET_INFLUX_PASSWORD if InfluxDB has auth on)
in Grafana's environment; Grafana expands `$VAR` in provisioning files.

The YAML files are JSON documents under a comment header: JSON is YAML (1.2), Grafana reads them,
and no YAML library is needed to write or check them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder

from . import alerts, panels
from .queries import DATASOURCE_UID

DATASOURCE_NAME = "gpufleet InfluxDB"
DEFAULT_DATABASE = "gpufleet"  # the collector's default --bucket
FOLDER = "gpufleet"
MIN_INTERVAL = "10s"  # the agent's default window: $__interval never goes below it


def to_yaml(document: dict[str, Any], header: str) -> str:
    """A YAML file: `# header` comment lines, then the document as indented JSON."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + json.dumps(document, indent=2, sort_keys=False, ensure_ascii=True) + "\n"


def read_yaml(text: str) -> Any:
    """Read back what to_yaml() wrote (comment lines, then JSON)."""
    return json.loads("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")))


def datasource(database: str = DEFAULT_DATABASE) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": DATASOURCE_NAME,
                "uid": DATASOURCE_UID,
                "type": "influxdb",
                "access": "proxy",
                "url": "$GPUFLEET_INFLUX_URL",
                "user": "$GPUFLEET_INFLUX_USER",
                "database": database,  # Grafana < 9 reads it here
                "isDefault": False,
                "editable": False,
                "jsonData": {
                    "version": "InfluxQL",
                    "dbName": database,
                    "httpMode": "POST",  # a long `=~ /^(a|b|...)$/` selection does not fit in a URL
                    "timeInterval": MIN_INTERVAL,
                },
                "secureJsonData": {"password": "$GPUFLEET_INFLUX_PASSWORD"},
            }
        ],
    }


def dashboard_provider(path: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "gpufleet",
                "orgId": 1,
                "folder": FOLDER,
                "folderUid": FOLDER,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,  # the files are generated: edit the code, rebuild
                "updateIntervalSeconds": 60,
                "options": {"path": path, "foldersFromFilesStructure": False},
            }
        ],
    }


def dashboards_json() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON (plain dicts, as written)."""
    out = {}
    for dashboard in panels.all_dashboards():
        out[f"{dashboard.uid}.json"] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return out


def panel_ids(dashboards: dict[str, dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(dashboard uid, panel title) -> panel id."""
    ids: dict[tuple[str, str], int] = {}
    for dashboard in dashboards.values():
        for panel in panels.iter_panels(dashboard):
            key = (dashboard["uid"], panel["title"])
            if key in ids:
                raise ValueError(f"two panels titled {panel['title']!r} in {dashboard['uid']}")
            ids[key] = panel["id"]
    return ids


def build(out_dir: Path, *, database: str = DEFAULT_DATABASE, dashboards_path: str | None = None) -> list[Path]:
    """Write the dashboards and provisioning files under `out_dir`; return the paths written.

    `dashboards_path` is where Grafana will find the dashboard JSON files (the provider's path);
    by default `out_dir/dashboards` as an absolute path, for a Grafana on the same machine.
    """
    out_dir = Path(out_dir)
    board_dir = out_dir / "dashboards"
    prov_dir = out_dir / "provisioning"
    for folder in (board_dir, prov_dir / "datasources", prov_dir / "dashboards", prov_dir / "alerting"):
        folder.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        written.append(path)

    boards = dashboards_json()
    for name, board in boards.items():
        write(board_dir / name, json.dumps(board, indent=2, sort_keys=True) + "\n")
    generated = "Generated by `gpufleet dashboards build`; edit dashboards/*.py and rebuild, not this file."
    write(
        prov_dir / "datasources" / "gpufleet.yaml",
        to_yaml(datasource(database), f"{generated}\nGrafana expands $GPUFLEET_INFLUX_* from its environment."),
    )
    write(
        prov_dir / "dashboards" / "gpufleet.yaml",
        to_yaml(dashboard_provider(dashboards_path or str(board_dir.resolve())), generated),
    )
    write(prov_dir / "alerting" / "gpufleet.yaml", to_yaml(alerts.provisioning(panel_ids(boards)), generated))
    return written
