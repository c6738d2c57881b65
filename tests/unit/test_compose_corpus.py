"""Public real-world compose files (tests/data/compose_corpus, sources in INDEX.md) are read.

Every file in the corpus names an image for every service; each must load as Shoal reads
it for ``shoal deploy`` (the list is pinned, so a file that stops loading fails here by
name), with its services, networks and secrets as Compose would make them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.controller.compose import load_compose

CORPUS = Path(__file__).resolve().parents[1] / "data" / "compose_corpus"

ACCEPTED = [
    "airflow",
    "anything-llm",
    "authentik",
    "awesome-compose-alfresco",
    "awesome-compose-bunkerweb-mariadb",
    "awesome-compose-elk",
    "awesome-compose-genieacs-mongodb",
    "awesome-compose-gitea-postgres",
    "awesome-compose-graylog",
    "awesome-compose-n01d-pentest-stack",
    "awesome-compose-netdata",
    "awesome-compose-nextcloud-redis-mariadb",
    "awesome-compose-odoo-postgres",
    "awesome-compose-pihole-cloudflared",
    "awesome-compose-postgresql-pgadmin",
    "awesome-compose-prometheus-grafana",
    "convex-self-hosted",
    "cp-all-in-one-community",
    "docker-mailserver",
    "dockprom",
    "elasticsearch-docs-cluster",
    "example-voting-app-stack",
    "immich",
    "immich-prod",
    "kong",
    "langfuse",
    "librechat",
    "localai",
    "mailcow",
    "mastodon",
    "mattermost",
    "minio-distributed",
    "nextcloud-aio",
    "nextcloud-postgres-apache",
    "paperless-ngx-postgres-tika",
    "plane-selfhost",
    "plausible",
    "searxng",
    "signoz",
    "swarmprom",
    "traefik-acme-dns-secrets",
    "traefik-acme-tls",
    "uptime-kuma-postgres",
    "vegasbrianc-prometheus-stack",
    "wg-easy",
    "windmill",
]


def test_the_corpus_is_what_the_list_pins() -> None:
    found = sorted(p.name for p in CORPUS.iterdir() if (p / "compose.yaml").is_file())
    assert found == ACCEPTED
    assert len(ACCEPTED) >= 30
    for slug in ACCEPTED:
        head = (CORPUS / slug / "compose.yaml").read_text().splitlines()[0]
        assert head.startswith("# Source: https://github.com/"), slug


@pytest.mark.parametrize("slug", ACCEPTED)
def test_a_public_compose_file_loads(slug: str) -> None:
    path = CORPUS / slug / "compose.yaml"
    project = load_compose(path, environ={})
    assert project.services
    named = any(line.startswith("name:") for line in path.read_text().splitlines())
    if not named:
        assert project.project == slug  # the folder's name, as Compose takes it
    for spec in project.services:
        assert spec.image
        document = spec.model_dump_json()
        for value in project.values.values():
            if len(value) >= 8:
                assert value.decode(errors="replace") not in document
        if spec.network_mode is None:
            assert spec.networks, f"{spec.name} joins no network"


def test_the_corpus_exercises_the_keys_real_files_use() -> None:
    projects = [load_compose(CORPUS / s / "compose.yaml", environ={}) for s in ACCEPTED]
    specs = [spec for p in projects for spec in p.services]
    assert sum(1 for s in specs if s.container_name) >= 10
    assert any(len(s.networks) > 1 for s in specs)
    assert any(m.kind == "secret" for s in specs for m in s.secrets)
    assert any(m.kind == "config" for s in specs for m in s.secrets)
    assert any(s.expose for s in specs) and any(s.ulimits for s in specs)
    assert any(s.logging for s in specs) and any(s.platform for s in specs)
    assert any(p.tasks for p in projects)  # service_completed_successfully
