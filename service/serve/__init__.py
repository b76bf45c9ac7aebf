"""Ray Serve deployments and the app builder: the only package that imports Ray."""
