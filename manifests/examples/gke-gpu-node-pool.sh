#!/usr/bin/env bash
# GKE GPU node pool for training and Triton (not a Kubernetes object: run it with gcloud; no kustomization uses it).
# GKE installs the driver (gpu-driver-version), exposes the GPUs as nvidia.com/gpu, labels every node
# cloud.google.com/gke-accelerator=nvidia-l4 and taints it nvidia.com/gpu=present:NoSchedule, which the pipeline's
# default toleration {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} and
# manifests/triton/gpu tolerate. To pin the type: train_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}
# and manifests/triton/gpu/node-selector-gke.yaml.
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${LOCATION:?set LOCATION, e.g. us-central1}"

gcloud container node-pools create gpu-l4 \
  --cluster="$CLUSTER" \
  --location="$LOCATION" \
  --machine-type=g2-standard-8 \
  --accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest \
  --enable-autoscaling --num-nodes=0 --min-nodes=0 --max-nodes=4
