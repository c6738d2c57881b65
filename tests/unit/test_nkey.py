"""protocol.nkey: the nkey text form, both ed25519 backends, and the nkeys stand-in.

The reference is the nkeys package itself (with PyNaCl), installed on this machine:
both backends must give its keys and its signatures, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.protocol import nkey
from shoal.protocol.signing import (
    InvalidKey,
    Signer,
    Unauthorized,
    canonical_bytes,
    verify_document,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BACKENDS = [nkey.NaclEd25519(), nkey.PureEd25519()]


def _vector() -> dict[str, str]:
    """The test vector as docs/security.md publishes it."""
    text = DOCS.read_text()
    table = dict(re.findall(r"^\| ([^|]+?) \| `([^`]+)` \|$", text, re.MULTILINE))
    request = re.search(r"The request to sign:\n\n```json\n(.*?)```", text, re.DOTALL)
    signature = re.search(r"The ed25519 signature, in hex:\n\n```\n(.*?)```", text, re.DOTALL)
    assert request is not None and signature is not None
    return {
        "seed": table["seed"],
        "raw_seed": table["raw ed25519 seed (hex)"],
        "public": table["public key"],
        "raw_public": table["raw ed25519 public key (hex)"],
        "request": request.group(1),
        "signature": "".join(signature.group(1).split()),
    }


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> nkey.Ed25519:
    chosen: nkey.Ed25519 = request.param
    monkeypatch.setattr(nkey, "backend", chosen)
    from shoal.protocol import signing

    signing._verify_key.cache_clear()
    return chosen


def test_the_published_vector_holds_on_each_backend(backend: nkey.Ed25519) -> None:
    vector = _vector()
    prefix, raw = nkey.decode_seed(vector["seed"])
    assert prefix == nkey.PREFIX_BYTE_USER
    assert raw.hex() == vector["raw_seed"]
    signer = Signer(vector["seed"])
    assert signer.public_key == vector["public"]
    assert nkey.decode_public_key(vector["public"]).hex() == vector["raw_public"]

    document = json.loads(vector["request"])
    canonical = canonical_bytes(document)
    assert len(canonical) == 227
    assert hashlib.sha256(canonical).hexdigest().startswith("78bc4345")
    signed = signer.sign_document(document)
    raw_sig = base64.urlsafe_b64decode(signed["sig"]["value"] + "==")
    assert raw_sig.hex() == vector["signature"]
    assert verify_document(signed) == vector["public"]


def test_a_tampered_request_or_signature_is_refused(backend: nkey.Ed25519) -> None:
    signer = Signer.generate()
    signed = signer.sign_document({"v": 1, "verb": "ps", "args": {}})
    tampered = dict(signed, verb="prune")
    with pytest.raises(Unauthorized):
        verify_document(tampered)
    for value in ("", "AAAA", signed["sig"]["value"][:-4] + "AAAA", "!!not base64!!"):
        with pytest.raises(Unauthorized):
            verify_document(dict(signed, sig=dict(signed["sig"], value=value)))
    other = Signer.generate().public_key
    with pytest.raises(Unauthorized):
        verify_document(dict(signed, sig=dict(signed["sig"], key=other)))


@given(raw_seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_both_backends_match_the_nkeys_package(raw_seed: bytes, message: bytes) -> None:
    seed_text = nkey.encode_seed(raw_seed)
    reference = nkeys.from_seed(bytearray(seed_text.encode()))
    assert reference.seed == seed_text.encode()
    for backend in BACKENDS:
        key = backend.signing_key(raw_seed)
        public = nkey.encode_public_key(key.public_key())
        assert public.encode() == reference.public_key
        signature = key.sign(message)
        assert signature == reference.sign(message)
        assert backend.verify_key(key.public_key()).verify(signature, message)
        assert not backend.verify_key(key.public_key()).verify(signature, message + b"x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SU",
        "not base32 at all!",
        "UAOVDR52MT3EUIEKCQKRHFXMCOPDYNIBNPMEJVO3X35LE32XSNS4JTEP",  # a public key
        "SUALFPW4UOY4VBWBMI465Y75PSIBUTBDR7C2JUYU2CYPVLFAEHTZ6HMARU",  # checksum off
        "SAALFPW4UOY4VBWBMI465Y75PSIBUTBDR7C2JUYU2CYPVLFAEHTZ6HMGRU",  # type changed
    ],
)
def test_malformed_seeds_are_typed_errors(text: str) -> None:
    with pytest.raises(nkey.NkeyError):
        nkey.decode_seed(text)
    with pytest.raises(InvalidKey):
        Signer(text)


def test_a_seed_of_another_key_type_is_not_a_signing_key() -> None:
    account_seed = nkey.encode_seed(bytes(32), nkey.PREFIX_BYTE_ACCOUNT)
    assert nkey.decode_seed(account_seed)[0] == nkey.PREFIX_BYTE_ACCOUNT
    with pytest.raises(InvalidKey, match="not a user seed"):
        Signer(account_seed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "U",
        "UAOVDR52MT3EUIEKCQKRHFXMCOPDYNIBNPMEJVO3X35LE32XSNS4JTEQ",  # checksum off
        "AAOVDR52MT3EUIEKCQKRHFXMCOPDYNIBNPMEJVO3X35LE32XSNS4JTEP",  # not a user key
        "U" + "A" * 300,
    ],
)
def test_malformed_public_keys_are_refused(text: str) -> None:
    signed = Signer.generate().sign_document({"v": 1})
    with pytest.raises(Unauthorized):
        verify_document(dict(signed, sig=dict(signed["sig"], key=text)))


def test_the_standin_does_what_nats_py_asks_of_nkeys() -> None:
    standin = nkey.nkeys_standin()
    seed = Signer.generate().seed
    mine, theirs = standin.from_seed(bytearray(seed)), nkeys.from_seed(bytearray(seed))
    assert mine.public_key == theirs.public_key
    assert mine.seed == theirs.seed
    assert mine.sign(b"nonce") == theirs.sign(b"nonce")
    mine.wipe()
    with pytest.raises(AssertionError):
        mine.sign(b"nonce")


def test_generated_user_keys_round_trip() -> None:
    pair = nkey.KeyPair.generate()
    assert pair.seed_text.startswith("SU") and pair.public_key_text.startswith("U")
    assert nkey.KeyPair(pair.seed_text).public_key_text == pair.public_key_text
    assert len(nkey.decode_public_key(pair.public_key_text)) == 32


def test_a_key_pair_signs_as_its_backend_does(backend: nkey.Ed25519) -> None:
    pair = nkey.KeyPair.generate()
    _, raw = nkey.decode_seed(pair.seed_text)
    reference = nkeys.from_seed(bytearray(pair.seed_text.encode()))
    for message in (b"", b"one", b"x" * 1000):
        assert pair.sign(message) == backend.signing_key(raw).sign(message)
        assert pair.sign(message) == reference.sign(message)


@given(
    host=st.text(min_size=1, max_size=40),
    message=st.text(max_size=40),
    signed=st.booleans(),
)
def test_a_request_encoded_per_host_is_its_canonical_form_with_the_signature(
    host: str, message: str, signed: bool
) -> None:
    from shoal.controller.gather import RequestEncoder
    from shoal.protocol import Request, Target

    signer = SIGNER if signed else None
    template = Request(
        verb="ps", args={"all": True, "note": message}, target=Target(host="x")
    ).model_dump(mode="json", exclude={"sig"})
    wire = RequestEncoder(template, signer).encode({"host": host})
    document = json.loads(wire)
    assert document["target"] == {"host": host}
    assert {k: v for k, v in document.items() if k not in ("sig", "target")} == {
        k: v for k, v in template.items() if k != "target"
    }
    unsigned = {k: v for k, v in document.items() if k != "sig"}
    if signer is None:
        assert "sig" not in document
        assert wire == canonical_bytes(unsigned)
    else:
        # The signed bytes are a prefix of the wire form, and the agent's check accepts it.
        assert wire.startswith(canonical_bytes(unsigned)[:-1] + b',"sig":{')
        assert document["sig"] == signer.signature(canonical_bytes(unsigned))
        assert verify_document(document) == signer.public_key


SIGNER = Signer.generate()
