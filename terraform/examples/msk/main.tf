# A complete deployment: an MSK cluster with SASL/SCRAM over TLS, its
# credentials in Secrets Manager, and one Tributary service running the two
# table specs in ./specs against a lake bucket, reading schemas from the
# registry at var.schema_registry_url. See docs/deployment.md.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_subnet" "private" {
  for_each = toset(var.private_subnet_ids)
  id       = each.value
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
}

# --- Kafka: MSK with SASL/SCRAM ----------------------------------------------

# MSK requires SCRAM secrets to use a customer-managed key.
resource "aws_kms_key" "kafka" {
  description             = "${var.environment_name}: MSK storage, SCRAM secret and broker logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kafka_key.json
}

data "aws_iam_policy_document" "kafka_key" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource is the key itself; account-wide administration is the AWS default key policy and defers to IAM.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource is the key itself; the logs statement is limited to the broker log group by encryption context.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource is the key itself, not every resource.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/msk/${var.environment_name}"]
    }
  }
}

resource "aws_cloudwatch_log_group" "brokers" {
  name              = "/msk/${var.environment_name}"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.kafka.arn
}

resource "aws_security_group" "brokers" {
  name_prefix = "${var.environment_name}-msk-"
  description = "MSK brokers: SASL/SCRAM over TLS from Tributary only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "brokers_from_tributary" {
  security_group_id            = aws_security_group.brokers.id
  description                  = "SASL/SCRAM over TLS from the Tributary tasks"
  ip_protocol                  = "tcp"
  from_port                    = 9096
  to_port                      = 9096
  referenced_security_group_id = module.tributary.security_group_id
}

resource "aws_msk_configuration" "kafka" {
  name           = "${var.environment_name}-kafka"
  kafka_versions = [var.kafka_version]

  # Producers of the example topics create nothing by accident; three
  # replicas and acks=all survive a broker loss.
  server_properties = <<-PROPERTIES
    auto.create.topics.enable = false
    default.replication.factor = 3
    min.insync.replicas = 2
    num.partitions = 12
  PROPERTIES
}

resource "aws_msk_cluster" "kafka" {
  cluster_name           = var.environment_name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = length(var.private_subnet_ids)

  broker_node_group_info {
    instance_type   = var.broker_instance_type
    client_subnets  = var.private_subnet_ids
    security_groups = [aws_security_group.brokers.id]

    storage_info {
      ebs_storage_info {
        volume_size = 500
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.kafka.arn
    revision = aws_msk_configuration.kafka.latest_revision
  }

  client_authentication {
    unauthenticated = false
    sasl {
      scram = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.kafka.arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.brokers.name
      }
    }
  }
}

# The SCRAM user Tributary connects as. MSK reads secrets named AmazonMSK_*.
resource "random_password" "scram" {
  length  = 32
  special = false
}

resource "aws_secretsmanager_secret" "scram" {
  #checkov:skip=CKV2_AWS_57:MSK SCRAM credentials rotate by writing a new secret version and restarting the service; automatic rotation would need a rotation Lambda that also updates the broker ACLs.
  name       = "AmazonMSK_${var.environment_name}_tributary"
  kms_key_id = aws_kms_key.kafka.arn
}

resource "aws_secretsmanager_secret_version" "scram" {
  secret_id = aws_secretsmanager_secret.scram.id
  secret_string = jsonencode({
    username = "tributary"
    password = random_password.scram.result
  })
}

resource "aws_msk_scram_secret_association" "tributary" {
  cluster_arn     = aws_msk_cluster.kafka.arn
  secret_arn_list = [aws_secretsmanager_secret.scram.arn]
  depends_on      = [aws_secretsmanager_secret_version.scram]
}

# --- Tributary ------------------------------------------------------------------

module "tributary" {
  source = "../../modules/tributary"

  name                 = var.environment_name
  image                = var.image
  image_repository_arn = var.image_repository_arn
  specs = {
    for f in fileset("${path.module}/specs", "*.yaml") : trimsuffix(f, ".yaml") => file("${path.module}/specs/${f}")
  }

  # Both specs use state_scope: partition: the tasks share the partitions
  # through the consumer group, and upgrades roll one task at a time.
  desired_count                      = var.tributary_tasks
  deployment_minimum_healthy_percent = 50

  vpc_id             = var.vpc_id
  subnet_ids         = var.private_subnet_ids
  aws_endpoint_cidrs = var.aws_endpoint_cidrs

  kafka_bootstrap_servers     = aws_msk_cluster.kafka.bootstrap_brokers_sasl_scram
  kafka_broker_cidrs          = [for s in data.aws_subnet.private : s.cidr_block]
  kafka_port                  = 9096
  kafka_sasl_scram_secret_arn = aws_secretsmanager_secret.scram.arn

  schema_registry_url                    = var.schema_registry_url
  schema_registry_cidrs                  = var.schema_registry_cidrs
  schema_registry_credentials_secret_arn = var.schema_registry_credentials_secret_arn
  secrets_kms_key_arns                   = compact([aws_kms_key.kafka.arn, var.schema_registry_secret_kms_key_arn])

  lake_bucket_name = var.lake_bucket_name
  environment = {
    RUST_LOG = "info"
  }
}
