"""Deployment support: the container health probe, the catalogue of `MMDLM_*` settings that the
deployment files must carry, and the Kubernetes manifest checks (kustomize rendering, strict schema
validation, Kubeflow CRD envelopes). Nothing here runs in a request path; workers and the API never
import it, except the probe, which runs as its own short process."""
