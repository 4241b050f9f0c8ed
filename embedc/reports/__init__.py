"""What a build reports: report.md, report.html and JUnit, all from the manifest."""
