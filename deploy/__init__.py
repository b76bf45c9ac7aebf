"""Kubernetes manifests for Tessera and the offline tools that render and check them.

``render.py`` writes the generated Serve config into the manifests, ``kustomize.py`` builds an
overlay the way ``kubectl kustomize`` does (for the subset these manifests use), ``validate.py``
checks every rendered object against its schema. None of them needs a cluster.
"""
