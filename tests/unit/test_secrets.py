"""Secret values: sealing to a host's key, the agent's file store, digests and redaction."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shoal.agent.audit import redact
from shoal.agent.files import FileStore, FilesUnavailable
from shoal.agent.policy import Policy, parse_policy, service_denials
from shoal.protocol import BadRequest, DeployArgs, NotFound, SecretArgs
from shoal.protocol.sealing import (
    SealingError,
    check_box_key,
    new_private_key,
    public_key,
    seal,
    unseal,
    value_digest,
)
from shoal.protocol.service import (
    FileMount,
    NetworkAttachment,
    NetworkSpec,
    ServiceSpec,
    VolumeSpec,
    spec_diff,
)


def mount(name: str = "db_password", value: bytes = b"hunter2", **fields: object) -> FileMount:
    return FileMount(
        kind="secret",
        name=name,
        target=f"/run/secrets/{name}",
        digest=value_digest("secret", name, value),
        **fields,
    )


# --- sealing -------------------------------------------------------------------------


def test_a_sealed_value_opens_only_with_its_hosts_key() -> None:
    private, other = new_private_key(), new_private_key()
    box = seal(b"hunter2", public_key(private))
    assert b"hunter2" not in box.encode()
    assert unseal(box, private) == b"hunter2"
    with pytest.raises(SealingError, match="does not open"):
        unseal(box, other)
    with pytest.raises(SealingError, match="does not open"):
        unseal("not base64!", private)


def test_sealing_twice_gives_different_boxes() -> None:
    key = public_key(new_private_key())
    assert seal(b"x", key) != seal(b"x", key)


@pytest.mark.parametrize("key", ["", "!!!", "AAAA"])
def test_a_bad_box_key_is_refused(key: str) -> None:
    with pytest.raises(SealingError, match="invalid box key"):
        check_box_key(key)


def test_digest_is_stable_salted_by_name_and_never_the_value() -> None:
    digest = value_digest("secret", "a", b"hunter2")
    assert digest == value_digest("secret", "a", b"hunter2")
    assert digest != value_digest("secret", "b", b"hunter2")
    assert digest != value_digest("config", "a", b"hunter2")
    assert digest != value_digest("secret", "a", b"hunter3")
    assert "hunter2" not in digest and digest.startswith("scrypt:")


# --- the agent's file store ----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    files = FileStore(tmp_path / "files")
    assert files.load_key() is not None
    return files


def test_the_box_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = FileStore(tmp_path / "files")
    key = first.load_key()
    path = tmp_path / "files" / "box.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "files").stat().st_mode) == 0o700
    assert FileStore(tmp_path / "files").load_key() == key


def test_a_revisions_files_have_the_mode_asked_in_a_private_directory(
    store: FileStore,
) -> None:
    key = store.load_key()
    assert key is not None
    m = mount(mode=0o440)
    files = store.materialize("db", 3, [m], {m.key: seal(b"hunter2", key)})
    (path,) = files.values()
    assert list(files) == ["/run/secrets/db_password"]
    assert Path(path).read_bytes() == b"hunter2"
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o440
    assert stat.S_IMODE(Path(path).parent.stat().st_mode) == 0o700
    assert store.existing("db", 3, [m]) == files


def test_a_value_that_does_not_match_the_digest_is_refused(store: FileStore) -> None:
    key = store.load_key()
    assert key is not None
    m = mount(value=b"hunter2")
    with pytest.raises(BadRequest, match="does not match"):
        store.materialize("db", 1, [m], {m.key: seal(b"other", key)})
    with pytest.raises(BadRequest, match="no value"):
        store.materialize("db", 1, [m], {})


def test_old_revisions_files_are_removed(store: FileStore) -> None:
    key = store.load_key()
    assert key is not None
    m = mount()
    for revision in (1, 2, 3):
        store.materialize("db", revision, [m], {m.key: seal(b"hunter2", key)})
    store.keep_only("db", {2, 3})
    with pytest.raises(NotFound):
        store.existing("db", 1, [m])
    assert store.existing("db", 3, [m])
    store.keep_only("db", set())
    assert not (store.root / "services" / "db").exists()  # type: ignore[operator]


def test_stored_secrets_are_0600_and_named_safely(store: FileStore) -> None:
    key = store.load_key()
    assert key is not None
    assert store.set_secret("api", seal(b"v1", key)) is True
    assert store.set_secret("api", seal(b"v1", key)) is False
    assert store.set_secret("api", seal(b"v2", key)) is True
    path = store.root / "secrets" / "api"  # type: ignore[operator]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.secret_names() == ["api"]
    m = FileMount(kind="secret", name="api", target="/run/secrets/api", external=True)
    (host_path,) = store.materialize("web", 1, [m], {}).values()
    assert Path(host_path).read_bytes() == b"v2"
    for hostile in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(BadRequest, match="invalid secret name"):
            store.set_secret(hostile, seal(b"v", key))
    assert store.remove_secret("api") is True and store.remove_secret("api") is False
    with pytest.raises(NotFound, match="shoal secret set api"):
        store.materialize("web", 2, [m], {})


def test_without_a_files_directory_there_are_no_secrets() -> None:
    store = FileStore(None)
    assert store.load_key() is None
    assert store.materialize("db", 1, [], {}) == {}
    with pytest.raises(FilesUnavailable):
        store.materialize("db", 1, [mount()], {"secret:db_password": "x"})


# --- specs ---------------------------------------------------------------------------


def test_fields_added_later_leave_an_existing_services_hash_as_it_was() -> None:
    # Pinned: the hash of a first-release spec, as agents in the field recorded it.
    spec = ServiceSpec(
        name="web",
        image="nginx:1.25",
        volumes=(VolumeSpec(type="volume", source="data", target="/data"),),
    )
    assert spec.spec_hash() == "6d113c2baf13bed2"  # computed by the previous release
    assert spec.model_copy(update={"init": True}).spec_hash() != spec.spec_hash()


def test_a_diff_names_a_changed_secret_never_its_digest() -> None:
    old = ServiceSpec(name="db", image="pg", secrets=(mount(value=b"a"),))
    new = ServiceSpec(name="db", image="pg", secrets=(mount(value=b"b"),))
    lines = spec_diff(old, new)
    assert lines == ["secret:db_password: value changed"]
    assert old.spec_hash() != new.spec_hash()


def test_sealed_values_are_hidden_from_repr_and_the_audit_trail() -> None:
    args = DeployArgs(service=ServiceSpec(name="db", image="pg"), sealed={"h": {"secret:a": "BOX"}})
    assert "BOX" not in repr(args)
    assert "BOX" not in str(redact(args.model_dump(mode="json")))
    secret = SecretArgs(action="set", name="a", sealed={"h": "BOX"})
    assert "BOX" not in str(redact(secret.model_dump(mode="json")))


def test_rm_takes_no_value() -> None:
    with pytest.raises(ValueError, match="rm takes no value"):
        SecretArgs(action="rm", name="a", sealed={"h": "x"})


# --- policy ----------------------------------------------------------------------------


def attached(network: NetworkSpec) -> ServiceSpec:
    return ServiceSpec(name="web", image="nginx", networks=(NetworkAttachment(network=network),))


def test_bridge_networks_are_allowed_and_other_drivers_need_the_policy() -> None:
    default = Policy.default()
    assert service_denials(default, attached(NetworkSpec(name="p_default"))) == []
    macvlan = attached(NetworkSpec(name="lan", driver="macvlan"))
    (denial,) = service_denials(default, macvlan)
    assert denial.rule == "containers.network_drivers"
    allowing = parse_policy('[containers]\nnetwork_drivers = ["macvlan"]\n', "policy.toml")
    assert service_denials(allowing, macvlan) == []


def test_the_host_network_by_name_needs_host_network() -> None:
    spec = attached(NetworkSpec(name="host", external=True))
    (denial,) = service_denials(Policy.default(), spec)
    assert denial.rule == "containers.host_network"
