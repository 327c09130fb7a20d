"""What the order schema's own fields add to marshmallow's, each shown beside marshmallow's."""
from datetime import datetime, timezone

import pytest
from marshmallow import ValidationError, fields

from app.schemas import Timestamp

STAMP = "2024-12-13T23:30:00.123456+05:30"


def test_a_timestamp_is_converted_to_utc_which_aware_datetime_leaves_to_the_caller():
    as_sent = fields.AwareDateTime(format="iso").deserialize(STAMP)
    assert as_sent.utcoffset().total_seconds() == 5.5 * 3600
    loaded = Timestamp().deserialize(STAMP)
    assert loaded == as_sent and loaded.tzinfo == timezone.utc


def test_a_padded_timestamp_is_trimmed_like_an_id():
    padded = f" {STAMP}\t"
    with pytest.raises(ValidationError):
        fields.AwareDateTime(format="iso").deserialize(padded)
    assert Timestamp().deserialize(padded) == datetime.fromisoformat(STAMP)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_moment_outside_the_years_of_utc_is_a_reason_not_an_overflow(stamp):
    # AwareDateTime takes it: its UTC time would be in year 0 or 10000.
    fields.AwareDateTime(format="iso").deserialize(stamp)
    with pytest.raises(ValidationError, match="years 1 to 9999"):
        Timestamp().deserialize(stamp)

