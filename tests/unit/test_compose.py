"""Compose files read into ServiceSpecs (controller/compose.py), from real YAML text."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.controller.compose import ComposeError, ComposeProject, load_compose
from shoal.controller.compose.interpolation import substitute
from shoal.controller.compose.networks import project_name
from shoal.controller.errors import FleetError
from shoal.protocol import (
    ErrorCode,
    FailureAction,
    HealthSpec,
    Order,
    PortSpec,
    RolloutConfig,
    ServiceSpec,
    VolumeSpec,
)
from shoal.protocol.service import LoggingSpec, NetworkAttachment, NetworkSpec, Ulimit

# --- helpers ------------------------------------------------------------------------


def write(directory: Path, text: str, name: str = "compose.yml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(
    tmp_path: Path,
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
) -> ComposeProject:
    path = write(tmp_path, text)
    return load_compose(path, environ={} if environ is None else environ, services=services)


def service(tmp_path: Path, body: str, *, environ: Mapping[str, str] | None = None) -> ServiceSpec:
    """The one service ``web`` whose keys (besides image) are ``body``."""
    text = "services:\n  web:\n    image: nginx\n" + textwrap.indent(textwrap.dedent(body), "    ")
    text += "volumes:\n  data:\n"
    project = load(tmp_path, text, environ=environ)
    assert len(project.services) == 1
    return project.services[0]


def error(
    tmp_path: Path,
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
) -> str:
    with pytest.raises(ComposeError) as info:
        load(tmp_path, text, environ=environ, services=services)
    return info.value.message


def service_error(tmp_path: Path, body: str, *, environ: Mapping[str, str] | None = None) -> str:
    text = "services:\n  web:\n    image: nginx\n" + textwrap.indent(textwrap.dedent(body), "    ")
    text += "volumes:\n  data:\n"
    return error(tmp_path, text, environ=environ)


# --- the basics ---------------------------------------------------------------------


def default_network(project: str) -> tuple[NetworkAttachment, ...]:
    """What a service that names no networks is attached to, as in Compose."""
    return (NetworkAttachment(network=NetworkSpec(name=f"{project}_default")),)


def test_minimal_service_has_the_spec_defaults(tmp_path: Path) -> None:
    project = load(tmp_path, "services:\n  web:\n    image: nginx:1.25\n")
    assert project.project == project_name(tmp_path.name)
    assert project.services == [
        ServiceSpec(name="web", image="nginx:1.25", networks=default_network(project.project))
    ]
    assert project.names == ["web"]
    assert project.tasks == set()
    assert dict(project.values) == {}
    assert project.path == tmp_path / "compose.yml"
    assert project.update_config == {}
    assert project.rollback_config == {}
    assert project.warnings == []


def test_compose_error_is_a_fleet_error_and_a_bad_request(tmp_path: Path) -> None:
    with pytest.raises(FleetError) as info:
        load(tmp_path, "services:\n  web:\n    build: .\n")
    assert isinstance(info.value, ComposeError)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: nginx\n    cgroup_parent: a\n")
    assert message == (
        f"{tmp_path / 'compose.yml'}: services.web.cgroup_parent: not supported by Shoal"
    )


def test_unknown_keys_fail_loudly_naming_the_key(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: nginx\n    imag: nginx\n")
    assert message.endswith("compose.yml: services.web.imag: not supported by Shoal")
    message = error(tmp_path, "services:\n  web:\n    image: nginx\nnetwork:\n  a: {}\n")
    assert message.endswith("compose.yml: network: not supported by Shoal")


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_TEST_TAG", "1.2.3")
    path = write(tmp_path, "services:\n  web:\n    image: nginx:${SHOAL_TEST_TAG}\n")
    assert load_compose(path).services[0].image == "nginx:1.2.3"


def test_a_relative_path_reads_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "services:\n  web:\n    image: nginx\n    volumes: ['./site:/srv']\n")
    monkeypatch.chdir(tmp_path)
    project = load_compose(Path("compose.yml"), environ={})
    assert project.services[0].volumes[0].source == str(tmp_path / "site")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "(top level): must be a mapping, not a list"),
        ("version: '3'\n", "services: required"),
        ("services:\n", "services: required"),
        ("services: {}\n", "services: no services defined"),
        ("services: [web]\n", "services: must be a mapping, not a list"),
        ("services:\n  web:\n", "services.web.image: required"),
        ("services:\n  web: nginx\n", "services.web: must be a mapping"),
        ("services:\n  web: {image: nginx\n", "invalid YAML"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no such file"):
        load_compose(tmp_path / "nope.yml", environ={})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: nginx\n   bad: [\n")
    assert "line " in message
    assert "invalid YAML" in message


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: nginx\n    image: redis\n")
    assert "line 4" in message
    assert "'image' is given twice" in message


# --- top level ----------------------------------------------------------------------


def test_version_name_and_x_keys_are_ignored_at_the_top_level(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        version: "3.9"
        name: my-project
        x-anything:
          whatever: [1, 2, 3]
          bad-template: "${"
        services:
          web:
            image: nginx
        """,
    )
    assert project.names == ["web"]


def test_x_keys_are_ignored_in_a_service_and_inside_its_sections(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        x-note: "${"
        ports:
          - target: 80
            x-note: hi
        volumes:
          - type: volume
            source: data
            target: /data
            x-note: hi
        healthcheck:
          test: "true"
          x-note: hi
        deploy:
          x-note: hi
          update_config:
            x-note: hi
        """,
    )
    assert spec.ports == (PortSpec(container_port=80),)
    assert spec.volumes == (VolumeSpec(type="volume", source="data", target="/data"),)
    assert spec.healthcheck == HealthSpec(test=("CMD-SHELL", "true"))


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        x-common: &common
          restart: unless-stopped
          labels:
            team: core
          environment:
            LEVEL: info
        services:
          web:
            <<: *common
            image: nginx
            environment:
              LEVEL: debug
          worker:
            <<: *common
            image: busybox
        """,
    )
    web, worker = project.services
    assert web.restart == worker.restart == "unless-stopped"
    assert web.labels == worker.labels == {"team": "core"}
    assert web.environment == {"LEVEL": "debug"}
    assert worker.environment == {"LEVEL": "info"}


@pytest.mark.parametrize("key", ["include", "models"])
def test_unsupported_top_level_sections_are_refused(tmp_path: Path, key: str) -> None:
    message = error(tmp_path, f"services:\n  web:\n    image: nginx\n{key}:\n  a: {{}}\n")
    assert f"compose.yml: {key}: not supported by Shoal" in message


def test_networks_secrets_and_configs_sections_are_read(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        name: demo
        services:
          web:
            image: nginx
            networks: [front]
            secrets: [token]
            configs: [site]
        networks:
          front: {}
        secrets:
          token: {environment: TOKEN}
        configs:
          site: {content: hello}
        """,
        environ={"TOKEN": "t0ken"},
    )
    web = project.services[0]
    assert [a.network.name for a in web.networks] == ["demo_front"]
    assert [(m.kind, m.name, m.target) for m in web.secrets] == [
        ("secret", "token", "/run/secrets/token"),
        ("config", "site", "/site"),
    ]
    assert dict(project.values) == {"secret:token": b"t0ken", "config:site": b"hello"}


@pytest.mark.parametrize("body", ["", " {}", "\n    driver: local", "\n    x-note: 1"])
def test_declared_named_volumes(tmp_path: Path, body: str) -> None:
    project = load(
        tmp_path,
        "services:\n  web:\n    image: nginx\n    volumes: ['data:/data']\n"
        f"volumes:\n  data:{body}\n",
    )
    assert project.services[0].volumes == (
        VolumeSpec(type="volume", source="data", target="/data"),
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        ("driver: nfs", "volumes.data.driver: 'nfs': only the local driver is supported"),
        ("name: 'bad name'", "volumes.data.name: 'bad name': letters, digits"),
        ("external: maybe", "volumes.data.external: must be true or false, not 'maybe'"),
    ],
)
def test_named_volume_options_are_refused(tmp_path: Path, body: str, expected: str) -> None:
    text = f"services:\n  web:\n    image: nginx\nvolumes:\n  data:\n    {body}\n"
    assert expected in error(tmp_path, text)


@pytest.mark.parametrize(
    "body, source",
    [
        ("name: other", "other"),
        ("external: true", "data"),
        ("external: true\n    name: shared", "shared"),
        ("external: false", "data"),
    ],
)
def test_named_volume_name_and_external(tmp_path: Path, body: str, source: str) -> None:
    text = (
        "services:\n  web:\n    image: nginx\n    volumes: ['data:/data']\n"
        f"volumes:\n  data:\n    {body}\n"
    )
    assert load(tmp_path, text).services[0].volumes == (
        VolumeSpec(type="volume", source=source, target="/data"),
    )


# --- YAML 1.2 scalars ---------------------------------------------------------------


def test_yaml_12_scalars_as_compose_reads_them(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        restart: no
        ports:
          - 22:22
        environment:
          A: yes
          B: on
          C: off
          D: true
          E: 010
          F: 1.5
        """,
    )
    assert spec.restart == "no"
    assert spec.ports == (PortSpec(container_port=22, host_port=22),)
    assert spec.environment == {
        "A": "yes",
        "B": "on",
        "C": "off",
        "D": "true",
        "E": "10",
        "F": "1.5",
    }


# --- image and service names --------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.25",
        "registry.example.com:5000/team/app:v1",
        "ghcr.io/a/b@sha256:" + "a" * 64,
    ],
)
def test_valid_images(tmp_path: Path, image: str) -> None:
    project = load(tmp_path, f"services:\n  web:\n    image: '{image}'\n")
    assert project.services[0].image == image


@pytest.mark.parametrize("image", ["-rf", "a b", "Nginx", "nginx:", "--privileged"])
def test_bad_image_references_are_refused(tmp_path: Path, image: str) -> None:
    message = error(tmp_path, f"services:\n  web:\n    image: '{image}'\n")
    assert "services.web.image: invalid image reference" in message


def test_image_must_be_a_string(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: [nginx]\n")
    assert "services.web.image: must be a string, not a list" in message


def test_image_is_required(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    command: true\n")
    assert message.endswith("services.web.image: required")


@pytest.mark.parametrize("name", ["Web", "_web", "-web", "web!", "a" * 64])
def test_service_names_must_match_the_spec_pattern(tmp_path: Path, name: str) -> None:
    message = error(tmp_path, f"services:\n  '{name}':\n    image: nginx\n")
    assert f"services.{name}: service name {name!r} must be" in message
    assert "lowercase" in message


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("scale", "2", "one container of a service per host"),
        ("extends", "{service: base}", "YAML anchors"),
        ("links", "[db]", "services on one network reach each other by name"),
        ("external_links", "[other_db]", "attach the service to an external network"),
        ("volumes_from", "[other]", "mount the same named volume instead"),
        ("cgroup_parent", "mine", "not supported by Shoal"),
        ("userns_mode", "host", "not supported by Shoal"),
        ("runtime", "runc", "not supported by Shoal"),
        ("label_file", "./labels", "not supported by Shoal"),
    ],
)
def test_unsupported_service_keys_are_refused_by_name(
    tmp_path: Path, key: str, value: str, reason: str
) -> None:
    message = service_error(tmp_path, f"{key}: {value}\n")
    assert f"services.web.{key}: " in message
    assert reason in message


@pytest.mark.parametrize(
    "key, value, field, expected",
    [
        ("container_name", "web-1", "container_name", "web-1"),
        ("sysctls", "{net.core.somaxconn: 1024}", "sysctls", {"net.core.somaxconn": "1024"}),
        ("expose", "['80']", "expose", ("80/tcp",)),
        ("hostname", "web1", "hostname", "web1"),
        ("tmpfs", "[/run]", "tmpfs", ("/run",)),
        ("ulimits", "{nofile: 1024}", "ulimits", {"nofile": Ulimit(soft=1024, hard=1024)}),
        ("logging", "{driver: none}", "logging", LoggingSpec(driver="none")),
        ("platform", "linux/amd64", "platform", "linux/amd64"),
    ],
)
def test_keys_once_refused_are_now_read(
    tmp_path: Path, key: str, value: str, field: str, expected: object
) -> None:
    assert getattr(service(tmp_path, f"{key}: {value}\n"), field) == expected


def test_a_refused_key_is_named_before_its_value_is_interpolated(tmp_path: Path) -> None:
    message = service_error(tmp_path, "scale: '${'\n")
    assert "services.web.scale: Shoal runs one container of a service per host" in message


def test_a_self_referencing_yaml_value_is_an_error_not_a_crash(tmp_path: Path) -> None:
    message = service_error(tmp_path, "labels: &loop [*loop]\n")
    assert "services.web.labels" in message
    assert "nested too deeply" in message


def test_build_with_an_image_is_ignored_with_a_warning(tmp_path: Path) -> None:
    project = load(tmp_path, "services:\n  web:\n    image: app\n    build: .\n")
    assert project.services[0].image == "app"
    assert project.warnings == ["service web: the build section is ignored; deploying image app"]


def test_build_without_an_image_is_refused(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    build: .\n")
    assert message.endswith(
        "compose.yml: services.web.build: Shoal deploys images and does not build them:"
        " build and push the image, then add image: to service web"
    )


# --- command and entrypoint ---------------------------------------------------------


@pytest.mark.parametrize("key", ["command", "entrypoint"])
@pytest.mark.parametrize(
    "value, expected",
    [
        ("nginx -g 'daemon off;'", ("nginx", "-g", "daemon off;")),
        ('sh -c "echo \\"hi there\\""', ("sh", "-c", 'echo "hi there"')),
        ("[sleep, 10]", ("sleep", "10")),
        ("['sh', '-c', 'echo $$HOME']", ("sh", "-c", "echo $HOME")),
        ("[]", ()),
        ("''", ()),
    ],
)
def test_command_and_entrypoint(tmp_path: Path, key: str, value: str, expected: object) -> None:
    assert getattr(service(tmp_path, f"{key}: {value}\n"), key) == expected


def test_command_unset_is_none(tmp_path: Path) -> None:
    spec = service(tmp_path, "command:\n")
    assert spec.command is None
    assert spec.entrypoint is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"echo \'unclosed"', "services.web.command: cannot split"),
        ("{a: b}", "services.web.command: must be a list, not a mapping"),
        ("[echo, [x]]", "services.web.command[1]: must be a string, not a list"),
        ("[echo, true]", "services.web.command[1]: must be a string, not a boolean"),
    ],
)
def test_bad_commands(tmp_path: Path, value: str, expected: str) -> None:
    assert expected in service_error(tmp_path, f"command: {value}\n")


# --- environment and env_file ---------------------------------------------------------


def test_environment_list_form(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        environment:
          - A=1
          - B=x=y
          - C=
          - FROM_ENV
          - NOT_SET
        """,
        environ={"FROM_ENV": "shell"},
    )
    assert spec.environment == {"A": "1", "B": "x=y", "C": "", "FROM_ENV": "shell"}


def test_environment_mapping_form(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        environment:
          A: 1
          B: "two"
          C: false
          D: ""
          FROM_ENV:
          NOT_SET:
        """,
        environ={"FROM_ENV": "shell"},
    )
    assert spec.environment == {"A": "1", "B": "two", "C": "false", "D": "", "FROM_ENV": "shell"}


@pytest.mark.parametrize(
    "body, expected",
    [
        ("environment: [=x]", "services.web.environment[0]: '=x' has no variable name"),
        ("environment: {A: [1]}", "services.web.environment.A: must be a string, not a list"),
        ("environment: nope", "services.web.environment: must be a mapping, not str"),
    ],
)
def test_bad_environment(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in service_error(tmp_path, body + "\n")


def test_env_file_syntax(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text(
        textwrap.dedent(
            """\
            # a comment

            PLAIN=value
            export EXPORTED=yes
            SPACED = around
            INLINE=value # a comment
            HASH=a#b
            SINGLE='literal ${NOT} # kept'
            DOUBLE="line1\\nline2 \\"q\\" ${FROM_ENV}"
            MULTI="first\x20\x20\x20
            second"
            SPACES='  padded  '\x20\x20
            EMPTY=
            FROM_SHELL
            UNSET_BARE
            REF=${PLAIN}-${FROM_ENV:-x}
            DOTTED.KEY-1=ok
            """
        )
    )
    spec = service(tmp_path, "env_file: app.env\n", environ={"FROM_ENV": "env", "FROM_SHELL": "s"})
    assert spec.environment == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "around",
        "INLINE": "value",
        "HASH": "a#b",
        "SINGLE": "literal ${NOT} # kept",
        "DOUBLE": 'line1\nline2 "q" env',
        "MULTI": "first   \nsecond",
        "SPACES": "  padded  ",
        "EMPTY": "",
        "FROM_SHELL": "s",
        "REF": "value-env",
        "DOTTED.KEY-1": "ok",
    }


def test_env_files_in_order_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=a\nB=a\nC=a\n")
    (tmp_path / "b.env").write_text("B=b\nC=b\n")
    spec = service(
        tmp_path,
        """\
        env_file: [a.env, b.env]
        environment:
          C: service
        """,
    )
    assert spec.environment == {"A": "a", "B": "b", "C": "service"}


def test_env_file_paths_are_relative_to_the_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_dir = tmp_path / "project"
    write(
        project_dir,
        "services:\n  web:\n    image: nginx\n    env_file: ./conf/app.env\n",
    )
    (project_dir / "conf").mkdir()
    (project_dir / "conf" / "app.env").write_text("WHERE=conf\n")
    monkeypatch.chdir(tmp_path)
    project = load_compose(Path("project/compose.yml"), environ={})
    assert project.services[0].environment == {"WHERE": "conf"}


def test_env_file_long_syntax_and_required(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\n")
    spec = service(
        tmp_path,
        """\
        env_file:
          - path: a.env
          - path: ./missing.env
            required: false
        """,
    )
    assert spec.environment == {"A": "1"}


@pytest.mark.parametrize(
    "body, content, expected",
    [
        ("env_file: missing.env", None, "services.web.env_file: env file"),
        ("env_file: [{required: true}]", None, "services.web.env_file[0].path: required"),
        ("env_file: [{path: a.env, format: raw}]", "", "env_file[0].format: not supported"),
        ("env_file: a.env", "BAD KEY=1\n", "line 1: invalid variable name 'BAD KEY'"),
        ("env_file: a.env", 'OK=1\nQ="open\n', 'line 2: unterminated "-quoted value'),
        ("env_file: a.env", "Q='x' y\n", "line 1: unexpected text after the quoted value"),
        ("env_file: a.env", "R=${MISSING:?set it}\n", "required variable MISSING"),
    ],
)
def test_bad_env_files(tmp_path: Path, body: str, content: str | None, expected: str) -> None:
    if content is not None:
        (tmp_path / "a.env").write_text(content)
    assert expected in service_error(tmp_path, body + "\n")


def test_dot_env_supplies_variables_and_environ_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\nOTHER=dotenv\nBARE=dotenv-bare\n")
    text = """\
        services:
          web:
            image: nginx:${TAG}
            environment:
              - OTHER=${OTHER}
              - BARE
        """
    project = load(tmp_path, text, environ={"OTHER": "shell"})
    spec = project.services[0]
    assert spec.image == "nginx:from-dotenv"
    assert spec.environment == {"OTHER": "shell", "BARE": "dotenv-bare"}


def test_dot_env_values_can_use_the_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=${BASE}-1\nTAG2=${TAG}x\n")
    project = load(
        tmp_path,
        "services:\n  web:\n    image: nginx:${TAG2}\n",
        environ={"BASE": "v2"},
    )
    assert project.services[0].image == "nginx:v2-1x"


def test_a_bad_dot_env_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GOOD=1\nBAD KEY\n")
    message = error(tmp_path, "services:\n  web:\n    image: nginx\n")
    assert ".env: line 2: invalid variable name 'BAD KEY'" in message


# --- interpolation ------------------------------------------------------------------

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    "template, expected",
    [
        ("plain", "plain"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("pre-${SET}-post", "pre-value-post"),
        ("$SET.suffix", "value.suffix"),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${SET:-default}", "value"),
        ("${UNSET-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${SET-default}", "value"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${SET:?must be set}", "value"),
        ("${EMPTY?must be set}", ""),
        ("$$", "$"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: $$5", "cost: $5"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a}b}", "ab}"),
        ("${UNSET:-}", ""),
        ("$SET$SET", "valuevalue"),
        ("${UNSET}", ""),
        ("$UNSET", ""),
    ],
)
def test_interpolation(tmp_path: Path, template: str, expected: str) -> None:
    spec = service(tmp_path, f"environment:\n  V: '{template}'\n", environ=ENV)
    assert spec.environment["V"] == expected


@pytest.mark.parametrize(
    "template, expected",
    [
        (
            "${UNSET:?please set UNSET}",
            "required variable UNSET is missing a value: please set UNSET",
        ),
        ("${EMPTY:?no empty}", "required variable EMPTY is missing a value: no empty"),
        ("${UNSET?gone}", "required variable UNSET is missing a value: gone"),
        ("${UNSET?}", "required variable UNSET is missing a value"),
        ("${UNSET:?${SET} needed}", "missing a value: value needed"),
        ("cost $5", "invalid interpolation in 'cost $5' (write $$ for a literal $)"),
        ("trailing $", "invalid interpolation"),
        ("${}", "invalid interpolation"),
        ("${1X}", "invalid interpolation"),
        ("${SET", "invalid interpolation"),
        ("${SET:x}", "invalid interpolation"),
        ("${SET SET}", "invalid interpolation"),
    ],
)
def test_interpolation_errors(tmp_path: Path, template: str, expected: str) -> None:
    message = service_error(tmp_path, f"environment:\n  V: '{template}'\n", environ=ENV)
    assert "services.web.environment.V: " in message
    assert expected in message


def test_required_variable_error_names_where(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    image: 'nginx:${TAG:?set TAG}'\n", environ={})
    assert message.endswith(
        "compose.yml: services.web.image: required variable TAG is missing a value: set TAG"
    )


def test_unset_variables_are_warned_about_once(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        "services:\n  web:\n    image: nginx\n    labels: ['a=$NOPE', 'b=${NOPE}', 'c=${NOPE-}']\n",
    )
    assert project.services[0].labels == {"a": "", "b": "", "c": ""}
    assert project.warnings == ["variable NOPE is not set; using an empty string"]


def test_keys_are_not_interpolated(tmp_path: Path) -> None:
    spec = service(tmp_path, "labels:\n  $$K: v\n  ${SET}: $SET\n", environ=ENV)
    assert spec.labels == {"$$K": "v", "${SET}": "value"}


def test_interpolation_reaches_every_kind_of_value(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        command: ["echo", "${MSG}"]
        ports: ["${PORT}:80"]
        cpus: ${CPUS}
        mem_limit: ${MEM}
        privileged: ${PRIV}
        restart: ${RESTART:-always}
        healthcheck:
          test: ["CMD", "check", "${MSG}"]
          retries: ${RETRIES}
          interval: ${INTERVAL}
        volumes: ["${VOL}:/data"]
        deploy:
          update_config:
            parallelism: ${PAR}
        """,
        environ={
            "MSG": "hi",
            "PORT": "8080",
            "CPUS": "1.5",
            "MEM": "1g",
            "PRIV": "true",
            "RETRIES": "5",
            "INTERVAL": "10s",
            "VOL": "data",
            "PAR": "25%",
        },
    )
    assert spec.command == ("echo", "hi")
    assert spec.ports == (PortSpec(container_port=80, host_port=8080),)
    assert spec.cpus == 1.5
    assert spec.mem_limit == 1024**3
    assert spec.privileged is True
    assert spec.restart == "always"
    assert spec.healthcheck == HealthSpec(test=("CMD", "check", "hi"), retries=5, interval=10.0)
    assert spec.volumes == (VolumeSpec(type="volume", source="data", target="/data"),)


@given(st.text())
def test_doubled_dollars_give_back_any_text(text: str) -> None:
    assert substitute(text.replace("$", "$$"), lambda _: None, lambda _: None) == text


# --- ports --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"80"', [PortSpec(container_port=80)]),
        ("80", [PortSpec(container_port=80)]),
        ('"8080:80"', [PortSpec(container_port=80, host_port=8080)]),
        ('"8080:80/udp"', [PortSpec(container_port=80, host_port=8080, protocol="udp")]),
        ('"53/UDP"', [PortSpec(container_port=53, protocol="udp")]),
        ('"9000:9000/sctp"', [PortSpec(container_port=9000, host_port=9000, protocol="sctp")]),
        (
            '"127.0.0.1:8080:80/udp"',
            [PortSpec(container_port=80, host_port=8080, host_ip="127.0.0.1", protocol="udp")],
        ),
        ('"127.0.0.1::80"', [PortSpec(container_port=80, host_ip="127.0.0.1")]),
        ('"[::1]:8080:80"', [PortSpec(container_port=80, host_port=8080, host_ip="::1")]),
        ('"::1:8080:80"', [PortSpec(container_port=80, host_port=8080, host_ip="::1")]),
        (
            '"8000-8001:80-81"',
            [
                PortSpec(container_port=80, host_port=8000),
                PortSpec(container_port=81, host_port=8001),
            ],
        ),
        ('"80-82"', [PortSpec(container_port=p) for p in (80, 81, 82)]),
        (
            '"0.0.0.0:5000-5001:5000-5001/udp"',
            [
                PortSpec(container_port=p, host_port=p, host_ip="0.0.0.0", protocol="udp")
                for p in (5000, 5001)
            ],
        ),
    ],
)
def test_ports_short_syntax(tmp_path: Path, value: str, expected: list[PortSpec]) -> None:
    assert list(service(tmp_path, f"ports:\n  - {value}\n").ports) == expected


def test_ports_long_syntax(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        ports:
          - target: 80
            published: 8080
            host_ip: 127.0.0.1
            protocol: tcp
            mode: host
          - target: 53
            published: "5353"
            protocol: udp
            mode: ingress
          - target: 443
          - target: "9090"
            published: ""
        """,
    )
    assert spec.ports == (
        PortSpec(container_port=80, host_port=8080, host_ip="127.0.0.1"),
        PortSpec(container_port=53, host_port=5353, protocol="udp"),
        PortSpec(container_port=443),
        PortSpec(container_port=9090),
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"0:80"', "ports[0]: invalid host port '0' (ports are 1-65535)"),
        ('"70000"', "ports[0]: invalid container port '70000'"),
        ('"80/foo"', "ports[0]: protocol 'foo' must be tcp, udp or sctp"),
        ('"web:80"', "ports[0]: invalid host port 'web'"),
        ('"8000-8002:80-81"', "the host and container port ranges must be the same size"),
        ('"8000-8001:80"', "the host and container port ranges must be the same size"),
        ('"8080:80-81"', "the host and container port ranges must be the same size"),
        ('"bad-ip:8080:80"', "ports[0]: 'bad-ip' is not an IP address"),
        ('"82-80"', "invalid container port '82-80'"),
        ("80.5", "invalid container port '80.5'"),
        ("{published: 80}", "ports[0].target: required"),
        ("{target: 80, mode: vip}", "ports[0].mode: 'vip' must be host or ingress"),
        ("{target: 80, name: web}", "ports[0].name: not supported by Shoal"),
        ("{target: 80, app_protocol: http}", "ports[0].app_protocol: not supported by Shoal"),
        ("{target: 80, published: 8000-8001}", "ports[0].published: '8000-8001': a range"),
        ("{target: http}", "ports[0].target: must be an integer"),
        ("{target: 80, protocol: icmp}", "protocol 'icmp' must be tcp, udp or sctp"),
        ("{target: 80, host_ip: nowhere}", "'nowhere' is not an IP address"),
    ],
)
def test_bad_ports(tmp_path: Path, value: str, expected: str) -> None:
    message = service_error(tmp_path, f"ports:\n  - {value}\n")
    assert "services.web.ports[0]" in message
    assert expected in message


def test_ports_must_be_a_list(tmp_path: Path) -> None:
    assert "services.web.ports: must be a list" in service_error(tmp_path, "ports: '80:80'\n")


# --- volumes ------------------------------------------------------------------------


def test_volumes_short_syntax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    spec = service(
        tmp_path,
        """\
        volumes:
          - data:/data
          - data:/ro:ro
          - ./site:/srv/site:ro
          - ../shared:/shared:rw
          - /etc/hosts:/etc/hosts:ro,cached
          - .:/app
          - ~/cfg:/cfg:delegated
          - ./a/../b/./c:/c
        """,
    )
    assert spec.volumes == (
        VolumeSpec(type="volume", source="data", target="/data"),
        VolumeSpec(type="volume", source="data", target="/ro", read_only=True),
        VolumeSpec(type="bind", source=str(tmp_path / "site"), target="/srv/site", read_only=True),
        VolumeSpec(type="bind", source=str(tmp_path.parent / "shared"), target="/shared"),
        VolumeSpec(type="bind", source="/etc/hosts", target="/etc/hosts", read_only=True),
        VolumeSpec(type="bind", source=str(tmp_path), target="/app"),
        VolumeSpec(type="bind", source="/home/someone/cfg", target="/cfg"),
        VolumeSpec(type="bind", source=str(tmp_path / "b" / "c"), target="/c"),
    )


def test_volumes_long_syntax(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        volumes:
          - type: volume
            source: data
            target: /data
          - type: bind
            source: ./conf
            target: /etc/app
            read_only: true
          - type: bind
            source: /var/log
            target: /logs
            read_only: "false"
            consistency: cached
        """,
    )
    assert spec.volumes == (
        VolumeSpec(type="volume", source="data", target="/data"),
        VolumeSpec(type="bind", source=str(tmp_path / "conf"), target="/etc/app", read_only=True),
        VolumeSpec(type="bind", source="/var/log", target="/logs"),
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("/data", "volumes[0]: '/data': anonymous volumes are not supported by Shoal"),
        ("other:/data", "volumes[0]: named volume 'other' is not declared under the top-level"),
        ("./x:relative", "the target 'relative' must be an absolute path"),
        ("a:/b:ro:extra", "must be SOURCE:TARGET[:MODE]"),
        (":/data", "has an empty source"),
        ("{type: npipe, source: a, target: /run}", "volumes[0].type: 'npipe' is not supported"),
        ("{source: data, target: /d}", "volumes[0].type: required (volume, bind or tmpfs)"),
        ("{type: volume, target: /d}", "volumes[0].source: anonymous volumes are not supported"),
        ("{type: bind, target: /d}", "volumes[0].source: required"),
        ("{type: volume, source: data}", "volumes[0].target: required"),
        ("{type: bind, source: /a, target: b}", "volumes[0].target: 'b' must be an absolute"),
        ("{type: volume, source: nope, target: /d}", "named volume 'nope' is not declared"),
        (
            "{type: bind, source: /a, target: /b, bind: {propagation: shared}}",
            "volumes[0].bind.propagation: not supported by Shoal",
        ),
        (
            "{type: volume, source: data, target: /b, volume: {subpath: a}}",
            "volumes[0].volume.subpath: needs Docker 26",
        ),
        (
            "{type: volume, source: data, target: /b, volume: {nocopy: maybe}}",
            "volumes[0].volume.nocopy: must be true or false",
        ),
        (
            "{type: bind, source: /a, target: /b, volume: {nocopy: true}}",
            "volumes[0].volume: only for type: volume",
        ),
        ("{type: bind, source: /a, target: /b, read_only: maybe}", "must be true or false"),
    ],
)
def test_bad_volumes(tmp_path: Path, value: str, expected: str) -> None:
    message = service_error(tmp_path, f"volumes:\n  - {value}\n")
    assert "services.web.volumes" in message
    assert expected in message


# --- labels, restart and the simple keys ---------------------------------------------


def test_labels_list_and_mapping(tmp_path: Path) -> None:
    assert service(tmp_path, "labels: [a=1, b, c=x=y]\n").labels == {"a": "1", "b": "", "c": "x=y"}
    assert service(tmp_path, "labels:\n  a: 1\n  b:\n  c: true\n  shoal.keep: 'yes'\n").labels == {
        "a": "1",
        "b": "",
        "c": "true",
        "shoal.keep": "yes",
    }


def test_shoal_labels_are_reserved(tmp_path: Path) -> None:
    message = service_error(tmp_path, "labels: {shoal.revision: '3'}\n")
    assert "services.web.labels: label 'shoal.revision' is reserved for Shoal" in message


@pytest.mark.parametrize("value", ['"no"', "no", "always", "on-failure", "unless-stopped"])
def test_restart_values(tmp_path: Path, value: str) -> None:
    assert service(tmp_path, f"restart: {value}\n").restart == value.strip('"')


@pytest.mark.parametrize(
    "value, expected",
    [
        ("on-failure:x", "'on-failure:x': the retry limit must be a number (on-failure:3)"),
        ("on-failure:-1", "'on-failure:-1': the retry limit must be a number"),
        ("sometimes", "'sometimes' must be one of no, always, on-failure, unless-stopped"),
        ("false", "services.web.restart: must be a string, not a boolean"),
    ],
)
def test_bad_restart(tmp_path: Path, value: str, expected: str) -> None:
    assert expected in service_error(tmp_path, f"restart: {value}\n")


def test_restart_on_failure_with_a_retry_limit(tmp_path: Path) -> None:
    spec = service(tmp_path, "restart: on-failure:3\n")
    assert spec.restart == "on-failure"
    assert spec.restart_max_attempts == 3
    assert service(tmp_path, "restart: on-failure\n").restart_max_attempts is None


def test_the_simple_keys(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        user: 1000
        working_dir: /app
        network_mode: host
        privileged: true
        pid: host
        ipc: shareable
        cap_add: [NET_ADMIN, SYS_TIME]
        cap_drop: [ALL]
        security_opt: ["no-new-privileges:true", "seccomp=unconfined"]
        stop_signal: SIGQUIT
        stop_grace_period: 1m30s
        devices:
          - /dev/ttyUSB0:/dev/ttyUSB0:rwm
          - /dev/fuse
          - source: /dev/sda
            target: /dev/xvda
            permissions: r
          - source: /dev/net/tun
        """,
    )
    assert spec.user == "1000"
    assert spec.working_dir == "/app"
    assert spec.network_mode == "host"
    assert spec.privileged is True
    assert spec.pid == "host"
    assert spec.ipc == "shareable"
    assert spec.cap_add == ("NET_ADMIN", "SYS_TIME")
    assert spec.cap_drop == ("ALL",)
    assert spec.security_opt == ("no-new-privileges:true", "seccomp=unconfined")
    assert spec.stop_signal == "SIGQUIT"
    assert spec.stop_grace_period == 90.0
    assert spec.devices == (
        "/dev/ttyUSB0:/dev/ttyUSB0:rwm",
        "/dev/fuse",
        "/dev/sda:/dev/xvda:r",
        "/dev/net/tun:/dev/net/tun",
    )


@pytest.mark.parametrize("value, expected", [("'yes'", True), ("'off'", False), ("false", False)])
def test_booleans_as_compose_reads_them(tmp_path: Path, value: str, expected: bool) -> None:
    assert service(tmp_path, f"privileged: {value}\n").privileged is expected


@pytest.mark.parametrize(
    "body, expected",
    [
        ("working_dir: app", "services.web.working_dir: 'app' must be an absolute path"),
        ("network_mode: 'service:db'", "services.web.network_mode: 'service:db': service:"),
        ("pid: 'service:db'", "services.web.pid: 'service:db'"),
        ("ipc: 'service:db'", "services.web.ipc: 'service:db'"),
        ("privileged: maybe", "services.web.privileged: must be true or false, not 'maybe'"),
        ("cap_add: NET_ADMIN", "services.web.cap_add: must be a list, not str"),
        ("security_opt: [[a]]", "services.web.security_opt[0]: must be a string"),
        ("devices: [{target: /dev/x}]", "services.web.devices[0].source: required"),
        ("devices: /dev/fuse", "services.web.devices: must be a list"),
        ("stop_signal: [TERM]", "services.web.stop_signal: must be a string"),
        ("user: {a: 1}", "services.web.user: must be a string, not a mapping"),
    ],
)
def test_bad_simple_keys(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in service_error(tmp_path, body + "\n")


# --- durations, sizes and cpus --------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("2h45m", 9900.0),
        ("1.5s", 1.5),
        ("100us", 0.0001),
        ("0", 0.0),
        ("10", 10.0),
        ("'0s'", 0.0),
        ("2.5", 2.5),
    ],
)
def test_durations(tmp_path: Path, value: str, seconds: float) -> None:
    assert service(tmp_path, f"stop_grace_period: {value}\n").stop_grace_period == pytest.approx(
        seconds
    )


@pytest.mark.parametrize("value", ["soon", "10 s", "s", "1x", "-5s", "-1", "1h-5m", "[1s]"])
def test_bad_durations(tmp_path: Path, value: str) -> None:
    message = service_error(tmp_path, f"stop_grace_period: {value}\n")
    assert "services.web.stop_grace_period: " in message


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512m", 512 * 1024**2),
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("1gb", 1024**3),
        ("1GB", 1024**3),
        ("100000", 100000),
        ("'100000'", 100000),
        ("1024b", 1024),
        ("64k", 64 * 1024),
        ("64kb", 64 * 1024),
        ("1.5g", int(1.5 * 1024**3)),
        ("512MiB", 512 * 1024**2),
        ("256 m", 256 * 1024**2),
    ],
)
def test_mem_limit(tmp_path: Path, value: str, expected: int) -> None:
    assert service(tmp_path, f"mem_limit: {value}\n").mem_limit == expected


@pytest.mark.parametrize("value", ["lots", "0", "0m", "-1m", "1x", "true"])
def test_bad_mem_limit(tmp_path: Path, value: str) -> None:
    assert "services.web.mem_limit: " in service_error(tmp_path, f"mem_limit: {value}\n")


@pytest.mark.parametrize("value, expected", [("1", 1.0), ("0.5", 0.5), ("'1.5'", 1.5)])
def test_cpus(tmp_path: Path, value: str, expected: float) -> None:
    assert service(tmp_path, f"cpus: {value}\n").cpus == expected


@pytest.mark.parametrize(
    "value, expected",
    [("lots", "must be a number"), ("0", "greater than 0"), ("'.nan'", "must be a number")],
)
def test_bad_cpus(tmp_path: Path, value: str, expected: str) -> None:
    message = service_error(tmp_path, f"cpus: {value}\n")
    assert "services.web.cpus: " in message
    assert expected in message


# --- healthcheck --------------------------------------------------------------------


def test_healthcheck_string_test_and_durations(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        healthcheck:
          test: curl -f http://localhost/ || exit 1
          interval: 1m30s
          timeout: 500ms
          retries: 5
          start_period: 1h
        """,
    )
    assert spec.healthcheck == HealthSpec(
        test=("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
        interval=90.0,
        timeout=0.5,
        retries=5,
        start_period=3600.0,
    )


@pytest.mark.parametrize(
    "test, expected",
    [
        ('["CMD", "pg_isready", "-U", "app"]', ("CMD", "pg_isready", "-U", "app")),
        ('["CMD-SHELL", "pg_isready || exit 1"]', ("CMD-SHELL", "pg_isready || exit 1")),
        ("'true'", ("CMD-SHELL", "true")),
    ],
)
def test_healthcheck_test_forms(tmp_path: Path, test: str, expected: tuple[str, ...]) -> None:
    spec = service(tmp_path, f"healthcheck:\n  test: {test}\n")
    assert spec.healthcheck == HealthSpec(test=expected)


def test_short_volume_options_nocopy_and_selinux_labels(tmp_path: Path) -> None:
    text = (
        "services:\n  web:\n    image: nginx\n    volumes:\n"
        "      - data:/data:nocopy\n      - /srv/a:/a:ro,Z\nvolumes:\n  data:\n"
    )
    data, bind = load(tmp_path, text).services[0].volumes
    assert data.nocopy is True and data.selinux is None
    assert bind.selinux == "Z" and bind.read_only is True
    relabelled = load(tmp_path, text.replace("data:/data:nocopy", "data:/data:z"))
    assert relabelled.services[0].volumes[0].selinux == "z"  # Docker relabels volumes too
    assert "nocopy is for named volumes" in error(tmp_path, text.replace(":ro,Z", ":nocopy"))


def test_swarm_only_deploy_keys_are_accepted_with_a_warning(tmp_path: Path) -> None:
    text = (
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3\n"
        "      placement: {constraints: [node.role == manager]}\n"
        "    healthcheck:\n      test: 'true'\n      retries: 0\n      start_interval: 5s\n"
    )
    project = load(tmp_path, text)
    warnings = " ".join(project.warnings)
    assert "deploy.replicas: 3" in warnings and "deploy.placement" in warnings
    assert "start_interval" in warnings
    assert project.services[0].healthcheck == HealthSpec(test=("CMD-SHELL", "true"))


def test_named_volume_driver_opts_and_labels_travel_with_the_mount(tmp_path: Path) -> None:
    text = (
        "services:\n  web:\n    image: nginx\n    volumes: [data:/data]\n"
        "volumes:\n  data:\n    driver_opts: {type: tmpfs, device: tmpfs}\n"
        "    labels: {team: a}\n"
    )
    (volume,) = load(tmp_path, text).services[0].volumes
    assert volume.driver_opts == {"type": "tmpfs", "device": "tmpfs"}
    assert volume.volume_labels == {"team": "a"}


@pytest.mark.parametrize(
    "body",
    [
        "healthcheck:\n",
        "healthcheck:\n  disable: false\n",
        "healthcheck:\n  disable: false\n  x-note: hi\n",
    ],
)
def test_no_healthcheck(tmp_path: Path, body: str) -> None:
    assert service(tmp_path, body).healthcheck is None


@pytest.mark.parametrize(
    "body",
    [
        "healthcheck:\n  test: [NONE]\n",
        "healthcheck:\n  disable: true\n",
        "healthcheck:\n  disable: true\n  interval: 10s\n",
    ],
)
def test_a_disabled_healthcheck_turns_off_the_images_own(tmp_path: Path, body: str) -> None:
    assert service(tmp_path, body).healthcheck == HealthSpec(test=("NONE",))


def test_healthcheck_disable_false_keeps_the_test(tmp_path: Path) -> None:
    spec = service(tmp_path, "healthcheck:\n  disable: false\n  test: 'true'\n")
    assert spec.healthcheck == HealthSpec(test=("CMD-SHELL", "true"))


@pytest.mark.parametrize(
    "body, expected",
    [
        ("interval: 10s", "healthcheck.test: required"),
        ("disable: false\n  retries: 3", "healthcheck.test: required"),
        ("test: []", "healthcheck.test: must not be empty"),
        ("test: ''", "healthcheck.test: must not be empty"),
        ("test: [RUN, x]", "a list starts with CMD, CMD-SHELL or NONE, not 'RUN'"),
        ("test: [CMD-SHELL, a, b]", "CMD-SHELL takes one string"),
        ("test: [CMD]", "CMD needs a command"),
        ("test: [NONE, x]", '["NONE"] takes no arguments'),
        ("test: 'true'\n  disable: true", "disable: true and test cannot be set together"),
        ("test: 'true'\n  interval: 0s", "healthcheck.interval: Input should be greater than 0"),
        ("test: 'true'\n  retries: many", "healthcheck.retries: must be an integer"),
        ("test: 'true'\n  timeout: soon", "healthcheck.timeout: must be a duration"),
    ],
)
def test_bad_healthchecks(tmp_path: Path, body: str, expected: str) -> None:
    message = service_error(tmp_path, f"healthcheck:\n  {body}\n")
    assert "services.web.healthcheck" in message
    assert expected in message


# --- depends_on ---------------------------------------------------------------------


def test_depends_on_orders_services_dependencies_first(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        services:
          web:
            image: nginx
            depends_on: [api, cache]
          api:
            image: app
            depends_on: [db]
          lone:
            image: busybox
          cache:
            image: redis
          db:
            image: postgres
        """,
    )
    assert project.names == ["lone", "cache", "db", "api", "web"]
    web = project.services[-1]
    assert web.depends_on == ("api", "cache")


def test_independent_services_keep_the_file_order(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        "services:\n"
        + "".join(f"  {name}:\n    image: nginx\n" for name in ["zeta", "alpha", "mid"]),
    )
    assert project.names == ["zeta", "alpha", "mid"]


def test_depends_on_long_syntax(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        services:
          web:
            image: nginx
            depends_on:
              db:
                condition: service_healthy
                required: true
                restart: false
              cache:
                condition: service_started
              queue:
          db:
            image: postgres
          cache:
            image: redis
          queue:
            image: rabbitmq
        """,
    )
    assert project.names == ["db", "cache", "queue", "web"]
    assert project.services[-1].depends_on == ("db", "cache", "queue")


@pytest.mark.parametrize(
    "deps, expected",
    [
        ("[nope]", "services.web.depends_on: unknown service 'nope' (services: web, db)"),
        (
            "{db: {condition: service_done}}",
            "depends_on.db.condition: 'service_done' must be one of service_started,"
            " service_healthy, service_completed_successfully",
        ),
        ("{db: {required: maybe}}", "depends_on.db.required: must be true or false"),
        ("{db: {restart: true}}", "depends_on.db.restart: restarting dependents is not supported"),
        ("{db: {wait: 1}}", "depends_on.db.wait: not supported by Shoal"),
        ("db", "services.web.depends_on: must be a mapping, not str"),
    ],
)
def test_bad_depends_on(tmp_path: Path, deps: str, expected: str) -> None:
    text = f"services:\n  web:\n    image: nginx\n    depends_on: {deps}\n  db:\n    image: pg\n"
    assert expected in error(tmp_path, text)


def test_depends_on_cycle_is_named(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """\
        services:
          ok:
            image: nginx
          a:
            image: nginx
            depends_on: [b]
          b:
            image: nginx
            depends_on: [c]
          c:
            image: nginx
            depends_on: [a, ok]
        """,
    )
    assert message.endswith("compose.yml: services: depends_on cycle: a -> b -> c -> a")


def test_a_service_depending_on_itself_is_a_cycle(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  a:\n    image: nginx\n    depends_on: [a]\n")
    assert "depends_on cycle: a -> a" in message


# --- choosing services ----------------------------------------------------------------

THREE = """\
services:
  web:
    image: nginx
    depends_on: [api]
  api:
    image: app
    depends_on: [db]
  db:
    image: postgres
    deploy:
      update_config: {parallelism: 2}
"""


def test_all_services_when_none_are_named(tmp_path: Path) -> None:
    assert load(tmp_path, THREE).names == ["db", "api", "web"]


def test_only_the_named_services_in_dependency_order(tmp_path: Path) -> None:
    project = load(tmp_path, THREE, services=["web", "db"])
    assert project.names == ["db", "web"]
    assert project.services[1].depends_on == ("api",)
    assert project.update_config == {"db": RolloutConfig(parallelism="2")}
    assert load(tmp_path, THREE, services=["web"]).names == ["web"]
    assert load(tmp_path, THREE, services=["web"]).update_config == {}
    assert load(tmp_path, THREE, services=["api", "api"]).names == ["api"]


def test_unknown_named_services_are_listed_with_the_available_ones(tmp_path: Path) -> None:
    message = error(tmp_path, THREE, services=["web", "nope", "zip"])
    assert message.endswith("no such service: nope, zip (services in the file: web, api, db)")


def test_every_service_is_checked_even_when_some_are_named(tmp_path: Path) -> None:
    text = "services:\n  web:\n    image: nginx\n  bad:\n    build: .\n"
    assert "services.bad.build: Shoal deploys images" in error(tmp_path, text, services=["web"])
    text = "services:\n  web:\n    image: nginx\n  bad:\n    image: nginx\n    scale: 2\n"
    assert "services.bad.scale" in error(tmp_path, text, services=["web"])


# --- deploy -------------------------------------------------------------------------


def test_update_and_rollback_config(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        services:
          web:
            image: nginx
            deploy:
              update_config:
                parallelism: 2
                delay: 10s
                failure_action: rollback
                monitor: 1m
                max_failure_ratio: 0.25
                order: start-first
              rollback_config:
                parallelism: 0
                delay: 500ms
                failure_action: continue
                monitor: 30s
                max_failure_ratio: "0.5"
                order: stop-first
          db:
            image: postgres
            deploy:
              update_config: {}
        """,
    )
    assert project.update_config == {
        "web": RolloutConfig(
            parallelism="2",
            delay=10.0,
            failure_action=FailureAction.ROLLBACK,
            monitor=60.0,
            max_failure_ratio=0.25,
            order=Order.START_FIRST,
        ),
        "db": RolloutConfig(),
    }
    assert project.rollback_config == {
        "web": RolloutConfig(
            parallelism="100%",
            delay=0.5,
            failure_action=FailureAction.CONTINUE,
            monitor=30.0,
            max_failure_ratio=0.5,
            order=Order.STOP_FIRST,
        )
    }


@pytest.mark.parametrize(
    "value, expected",
    [("1", "1"), ("0", "100%"), ("'0'", "100%"), ("'50%'", "50%"), ("'100%'", "100%"), ("7", "7")],
)
def test_parallelism(tmp_path: Path, value: str, expected: str) -> None:
    text = (
        "services:\n  web:\n    image: nginx\n"
        f"    deploy:\n      update_config:\n        parallelism: {value}\n"
    )
    assert load(tmp_path, text).update_config["web"].parallelism == expected


@pytest.mark.parametrize(
    "body, expected",
    [
        ("update_config: {parallelism: -1}", "update_config.parallelism: -1 must not be negative"),
        ("update_config: {parallelism: '0%'}", "must be a percentage from 1% to 100%"),
        ("update_config: {parallelism: '150%'}", "must be a percentage from 1% to 100%"),
        ("update_config: {parallelism: lots}", "update_config.parallelism: must be an integer"),
        ("update_config: {failure_action: stop}", "'stop' must be pause or continue or rollback"),
        ("rollback_config: {failure_action: rollback}", "'rollback' must be pause or continue"),
        ("update_config: {order: random}", "'random' must be stop-first or start-first"),
        ("update_config: {max_failure_ratio: 2}", "max_failure_ratio: 2.0 must be between 0 and 1"),
        ("update_config: {delay: soon}", "update_config.delay: must be a duration"),
        ("update_config: {monitor: -1s}", "update_config.monitor: must be a duration"),
        ("update_config: {rollback: 1}", "deploy.update_config.rollback: not supported by Shoal"),
        ("replicas: -1", "deploy.replicas: -1 must not be negative"),
        ("mode: host", "deploy.mode: 'host': Shoal runs one container of a service per host"),
        (
            "restart_policy: {condition: sometimes}",
            "deploy.restart_policy.condition: 'sometimes' must be none, on-failure or any",
        ),
        ("endpoint_mode: vip", "deploy.endpoint_mode: Swarm's service endpoints; not supported"),
        (
            "resources: {reservations: {devices: []}}",
            "resources.reservations.devices: device reservations (GPUs) are not supported",
        ),
        ("resources: {limits: {pids: many}}", "resources.limits.pids: must be an integer"),
        ("resources: {limits: {memory: lots}}", "resources.limits.memory: must be a size"),
    ],
)
def test_bad_deploy(tmp_path: Path, body: str, expected: str) -> None:
    message = service_error(tmp_path, f"deploy:\n  {body}\n")
    assert "services.web.deploy." in message
    assert expected in message


def test_deploy_mode_global_is_what_shoal_does(tmp_path: Path) -> None:
    assert service(tmp_path, "deploy:\n  mode: global\n").name == "web"


def test_resource_limits_become_mem_limit_and_cpus(tmp_path: Path) -> None:
    spec = service(tmp_path, "deploy:\n  resources:\n    limits: {memory: 256M, cpus: '0.25'}\n")
    assert spec.mem_limit == 256 * 1024**2
    assert spec.cpus == 0.25


def test_resource_limits_agreeing_with_the_service_are_fine(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        "mem_limit: 1g\ncpus: 2\ndeploy:\n  resources:\n    limits: {memory: 1024m, cpus: 2}\n",
    )
    assert spec.mem_limit == 1024**3
    assert spec.cpus == 2.0


@pytest.mark.parametrize(
    "body, expected",
    [
        ("mem_limit: 1g\ndeploy: {resources: {limits: {memory: 2g}}}", "limits.memory: '2g'"),
        ("cpus: 1\ndeploy: {resources: {limits: {cpus: 2}}}", "limits.cpus: 2 differs"),
    ],
)
def test_resource_limits_disagreeing_with_the_service_are_refused(
    tmp_path: Path, body: str, expected: str
) -> None:
    message = service_error(tmp_path, body + "\n")
    assert expected in message
    assert "set one of them" in message
