"""Build stages: export, calibrate, compile, judge, report; the stage cache and the manifest."""
