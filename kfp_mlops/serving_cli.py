"""``kfp-mlops predict``: predict by entity id, the entities' latest features read from the Feast online store and
sent to the model Triton serves (kfp_mlops.serving).

Exit codes: 0 printed the table; 1 Triton unreachable, the model not ready or the request failed; 2 the command line
must change (an entity not in the online store, a bad id, a feature repository or model config that does not fit).
Secrets (the Redis connection string, the SQL registry URL) come from the environment only, as the feature
repository's ``feature_store.yaml`` names them.
"""

from __future__ import annotations

import argparse


def cmd_predict(args: argparse.Namespace) -> int:
    from kfp_mlops.serving import format_predictions, log_predictions, predict_entities

    predictions = predict_entities(
        args.entities,
        args.feature_repo,
        args.url,
        args.model,
        model_config=args.model_package,
        model_repository=args.model_repository,
        protocol=args.protocol,
        version=args.version,
        feature_view=args.feature_view,
        timeout=args.timeout,
    )
    print(f"model {predictions.model} version {predictions.version} on {args.url} ({args.protocol})")
    print(format_predictions(predictions))
    if args.log:
        from kfp_mlops.components.shared.layout import version_path

        model_uri = (
            args.model_package or f"{args.model_repository.rstrip('/')}/{version_path(args.model, predictions.version)}"
        )
        files = log_predictions(predictions, args.log, model_uri)
        print(f"logged {len(predictions.entity_ids)} prediction(s) to {', '.join(files)}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` on the ``add_subparsers()`` object of ``kfp_mlops.cli.build_parser``."""
    from kfp_mlops.components.shared.layout import VERSION_METADATA_FILE
    from kfp_mlops.serving import DEFAULT_MODEL_NAME

    predict = subparsers.add_parser(
        "predict", help="predict by entity id: latest features from the Feast online store, sent to Triton"
    )
    predict.add_argument(
        "--entity",
        action="append",
        required=True,
        dest="entities",
        metavar="ID",
        help="an entity id (repeat for several)",
    )
    predict.add_argument("--url", required=True, help="Triton host:port (its HTTP or gRPC port, per --protocol)")
    predict.add_argument(
        "--feature-repo",
        required=True,
        metavar="DIR|s3://…|gs://…",
        help="the feature repository the features step wrote (feature_store.yaml, registry)",
    )
    predict.add_argument(
        "--model", default=DEFAULT_MODEL_NAME, help=f"served model name (default: {DEFAULT_MODEL_NAME})"
    )
    predict.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: http")
    predict.add_argument("--version", default="", help="model version (default: the latest Triton serves)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-package",
        metavar="URI",
        help="the model package (directory or s3:// / gs:// prefix holding model_config.json), "
        f"a version directory holding {VERSION_METADATA_FILE}, or either JSON file",
    )
    source.add_argument(
        "--model-repository",
        metavar="URI",
        help=f"Triton's model repository: reads <URI>/<model>/<version>/{VERSION_METADATA_FILE}, "
        "written by the deploy step",
    )
    predict.add_argument(
        "--feature-view", help="the Feast feature view (default: the one holding the model's features)"
    )
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds per Triton call (default: 30)")
    predict.add_argument(
        "--log",
        metavar="URI",
        help="append the predictions to this prediction log (inference.log: local, s3:// or gs://), as batch "
        "inference writes it",
    )
    predict.set_defaults(func=cmd_predict)
