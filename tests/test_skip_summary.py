"""The test run's skip summary: one line per reason, with a count."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_skips_are_grouped_by_reason(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.skip_summary import pytest_terminal_summary")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_needs_pg(n):
            pytest.skip("WEBHOOKS_TEST_DATABASE_URL not set")

        @pytest.mark.skip(reason="no chromium")
        def test_browser():
            pass

        def test_runs():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rfE")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*- skipped, by reason -*",
            "3  WEBHOOKS_TEST_DATABASE_URL not set",
            "1  no chromium",
        ]
    )
    assert "SKIPPED [" not in result.stdout.str()


def test_no_section_without_skips(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.skip_summary import pytest_terminal_summary")
    pytester.makepyfile("def test_runs():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "skipped, by reason" not in result.stdout.str()
