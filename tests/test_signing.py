from relay.wildix.signature import sign, verify
from tests.support.relay import SECRET
from tests.support.samples import fixture

VECTOR = "42433b287df78fdac5b71b4d2c00f97619a3275b2a5a6f2796a735f4180c5186"


def test_fixture_readme_vector() -> None:
    assert sign(fixture("call_completed"), SECRET) == VECTOR


def test_verify_accepts_the_vector_in_any_case_and_with_whitespace() -> None:
    body = fixture("call_completed")
    assert verify(body, SECRET, VECTOR)
    assert verify(body, SECRET, f" {VECTOR.upper()}\n")


def test_verify_rejects_changed_bytes_wrong_secret_and_missing_signature() -> None:
    body = fixture("call_completed")
    assert not verify(body + b" ", SECRET, VECTOR)
    assert not verify(body.replace(b":", b": "), SECRET, VECTOR)  # a re-serialisation
    assert not verify(body, SECRET + "x", VECTOR)
    assert not verify(body, SECRET, None)
    assert not verify(body, SECRET, "")
    assert not verify(body, "", VECTOR)
