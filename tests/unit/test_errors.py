import pickle

import pytest

from service.api.errors import as_tessera_error, grpc_code, http_body, http_headers
from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    NotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    TesseraError,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

CASES = [
    (InvalidInput, 400, "INVALID_ARGUMENT"),
    (Unauthenticated, 401, "UNAUTHENTICATED"),
    (Forbidden, 403, "PERMISSION_DENIED"),
    (NotAllowed, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"),
    (PayloadTooLarge, 413, "INVALID_ARGUMENT"),
    (UnsupportedMediaType, 415, "INVALID_ARGUMENT"),
    (Overloaded, 503, "RESOURCE_EXHAUSTED"),
    (Unavailable, 503, "UNAVAILABLE"),
    (DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
]


@pytest.mark.parametrize(("cls", "status", "grpc_name"), CASES)
def test_one_mapping_for_both_transports(cls: type[TesseraError], status: int, grpc_name: str) -> None:
    err = cls("what went wrong", param="image")
    assert err.http_status == status
    assert grpc_code(err).name == grpc_name
    assert http_body(err, oip=False) == {"error": {"code": err.code, "message": "what went wrong", "param": "image"}}
    assert http_body(err, oip=True) == {"error": "what went wrong"}


def test_overload_carries_retry_after() -> None:
    assert http_headers(Overloaded("busy")) == {"Retry-After": "1"}
    assert http_headers(InvalidInput("bad")) == {}


def test_errors_survive_pickling_between_processes() -> None:
    err = pickle.loads(pickle.dumps(PayloadTooLarge("too big", param="body")))
    assert isinstance(err, PayloadTooLarge)
    assert (err.message, err.param) == ("too big", "body")


def test_unknown_exceptions_are_500_and_say_so() -> None:
    err = as_tessera_error(RuntimeError("boom"))
    assert err.http_status == 500
    assert "bug" in err.message


def test_wrapped_tessera_errors_are_unwrapped() -> None:
    try:
        try:
            raise NotFound("no such model")
        except NotFound as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert isinstance(as_tessera_error(outer), NotFound)
