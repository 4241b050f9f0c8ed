"""JUnit XML: one test case per (artifact, gate), so CI systems show parity
failures natively. Build errors become one errored case per artifact."""
from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_tree(result) -> ET.ElementTree:
    suite = ET.Element("testsuite", name="embedc.parity")
    tests = failures = errors = 0
    for a in result.artifacts:
        if a.status == "error":
            case = ET.SubElement(suite, "testcase", classname=f"embedc.{a.target}.{a.precision}", name="build")
            ET.SubElement(case, "error", message=a.error or "build failed")
            tests += 1
            errors += 1
            continue
        for o in a.gates:
            case = ET.SubElement(suite, "testcase", classname=f"embedc.{a.target}.{a.precision}",
                                 name=f"{o.metric}>={o.threshold}")
            tests += 1
            if o.skipped:
                ET.SubElement(case, "skipped", message=o.note or "not measurable")
            elif o.failed:
                failures += 1
                detail = f"observed {o.observed}"
                if o.languages:
                    detail += f"; languages {list(o.languages)}"
                if o.worst:
                    detail += f"; worst texts {list(o.worst)[:5]}"
                ET.SubElement(case, "failure", message=f"{o.metric} {o.observed} < {o.threshold}").text = detail
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return ET.ElementTree(suite)


def write_junit(result, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        junit_tree(result).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
