"""compliance-checker's CF-1.8 suite as a test helper (offline, through its Python API)."""

import contextlib
import io
import json
import os
import tempfile


def cf_errors(path: str) -> list[str]:
    """High-priority (error) messages of compliance-checker's cf:1.8 suite, via its Python API."""
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ComplianceChecker.run_checker(path, ["cf:1.8"], 0, "lenient", output_filename=report,
                                          output_format="json")
        with open(report) as f:
            result = next(iter(json.load(f).values()))
    return [f"{item['name']}: {msg}" for item in result["high_priorities"]
            if item["value"][0] < item["value"][1] for msg in item["msgs"] or ["failed"]]
