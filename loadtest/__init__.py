"""Load tests for a running Tessera with Locust.

``locustfile.py`` holds the user classes (REST predict, OIP binary tensors, OIP gRPC, slide jobs);
``workload.py`` what they send (mixes, JPEG crops cut from real slides, request bodies);
``slo.py`` reads Locust's CSV statistics and checks them against ``slo.yaml``; ``runner.py`` is
``tessera loadtest`` (optionally starts the service, runs Locust headless, writes the report).
"""
