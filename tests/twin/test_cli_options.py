import pytest

from twin.cli.options import region_hours
from twin.errors import InputError


def test_region_hours_parses_and_refuses_bad_items():
    assert region_hours(["Kidney=2.8", " SG =1.5"], "--x") == {"Kidney": 2.8, "SG": 1.5}
    assert region_hours(None, "--x") == {}
    for bad, msg in (("Kidney", "REGION=HOURS"), ("Kidney=abc", "number"), ("Kidney=0", "> 0"),
                     ("Kidney=-1", "> 0")):
        with pytest.raises(InputError, match=msg) as e:
            region_hours([bad], "--half-life-h")
        assert "--half-life-h" in str(e.value)
