#!/usr/bin/env bash
# Triton's read-only access to a GCS model repository (gs://BUCKET/PREFIX), on GKE with Workload Identity: no key
# and no Secret (not checked on a cluster here). Triton's pods run as the Kubernetes service account
# kfp-mlops-serving/triton (manifests/triton/base); this binds it to a Google service account that may only read
# (roles/storage.objectViewer: get and list; no create, update or delete). The IAM condition limits reading objects
# to the repository's prefix and admits the bucket itself, so that Triton may list (the object names of the whole
# bucket: GCS checks list on the bucket, not on a prefix). The pipelines' own account (the deploy step writes the
# repository) keeps roles/storage.objectUser on the bucket.
# Not a Kubernetes object: run it with gcloud; no kustomization uses it.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${BUCKET:?set BUCKET}" "${PREFIX:=kfp-mlops-models}"
GSA="kfp-mlops-triton@${PROJECT}.iam.gserviceaccount.com"

gcloud iam service-accounts create kfp-mlops-triton --project="$PROJECT" \
  --display-name="Triton: read-only model repository"
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
  --member="serviceAccount:${GSA}" \
  --role=roles/storage.objectViewer \
  --condition="title=kfp-mlops-models-only,expression=resource.name.startsWith('projects/_/buckets/${BUCKET}/objects/${PREFIX}/') || resource.type == 'storage.googleapis.com/Bucket'"
# Workload Identity: the Kubernetes account kfp-mlops-serving/triton acts as the Google one.
gcloud iam service-accounts add-iam-policy-binding "$GSA" --project="$PROJECT" \
  --role=roles/iam.workloadIdentityUser \
  --member="serviceAccount:${PROJECT}.svc.id.goog[kfp-mlops-serving/triton]"
kubectl -n kfp-mlops-serving annotate serviceaccount triton --overwrite \
  "iam.gke.io/gcp-service-account=${GSA}"
