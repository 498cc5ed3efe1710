data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Execution role: what ECS itself needs to start the task (pull the image,
# write logs, read the secrets and spec parameters it injects).
resource "aws_iam_role" "execution" {
  name_prefix        = "tributary-${var.name}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

locals {
  secret_arns = compact([var.kafka_sasl_scram_secret_arn, var.schema_registry_credentials_secret_arn])
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.tributary.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [var.image_repository_arn]
    content {
      sid       = "PullImage"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [1]
    content {
      sid = "EcrLogin"
      # GetAuthorizationToken has no resource-level permissions.
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = length(local.secret_arns) == 0 ? [] : [1]
    content {
      sid       = "ReadConnectionSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) == 0 ? [] : [1]
    content {
      sid       = "DecryptConnectionSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }

  dynamic "statement" {
    for_each = var.spec_store == "ssm" ? [1] : []
    content {
      sid       = "ReadSpecParameters"
      actions   = ["ssm:GetParameters"]
      resources = [for p in aws_ssm_parameter.spec : p.arn]
    }
  }

  dynamic "statement" {
    for_each = var.spec_store == "ssm" ? [1] : []
    content {
      sid       = "DecryptSpecParameters"
      actions   = ["kms:Decrypt"]
      resources = [aws_kms_key.lake.arn]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-task"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Task role: what Tributary does at run time. Read and write the tables
# under the lake prefix, read its own specs, use the lake key. Nothing else.
resource "aws_iam_role" "task" {
  name_prefix        = "tributary-${var.name}-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ListLakePrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = concat(
        ["${var.lake_prefix}/*", var.lake_prefix, "${var.checkpoint_prefix}/*", var.checkpoint_prefix],
        var.spec_store == "s3" ? ["${local.spec_prefix}/*", local.spec_prefix] : [],
      )
    }
  }

  # Delta commits and batch plans are put-if-absent writes; vacuum,
  # failed-attempt clean-up and the offsets log's retention delete objects.
  # Under the lake and checkpoint prefixes only.
  statement {
    sid     = "ReadWriteTablesAndCheckpoints"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = [
      "${aws_s3_bucket.lake.arn}/${var.lake_prefix}/*",
      "${aws_s3_bucket.lake.arn}/${var.checkpoint_prefix}/*",
    ]
  }

  dynamic "statement" {
    for_each = var.spec_store == "s3" ? [1] : []
    content {
      sid       = "ReadSpecs"
      actions   = ["s3:GetObject"]
      resources = ["${aws_s3_bucket.lake.arn}/${local.spec_prefix}/*"]
    }
  }

  statement {
    sid       = "UseLakeKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.lake.arn]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "lake-access"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}
