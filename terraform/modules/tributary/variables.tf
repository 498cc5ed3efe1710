variable "name" {
  description = "Name of this deployment (one ECS service running one set of specs); prefixes every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "image" {
  description = "Tributary container image (built from docker/Dockerfile), pinned by tag or digest."
  type        = string
}

variable "image_repository_arn" {
  description = "ARN of the ECR repository holding the image, so the execution role may pull from it and nothing else. Null when the image is public."
  type        = string
  default     = null
}

variable "specs" {
  description = "Table specs of this service: file name (without .yaml) => YAML text, e.g. { clicks = file(\"specs/clicks.yaml\") }. Each runs as its own pipeline."
  type        = map(string)

  validation {
    condition     = length(var.specs) > 0 && alltrue([for k in keys(var.specs) : can(regex("^[A-Za-z0-9_-]+$", k))])
    error_message = "specs: at least one, named with letters, digits, - and _."
  }
}

variable "spec_store" {
  description = "How specs reach the task: `s3` (objects under _tributary/<name>/specs/ in the lake bucket) or `ssm` (SecureString parameters under /tributary/<name>/specs/, up to 8 KiB each)."
  type        = string
  default     = "s3"

  validation {
    condition     = contains(["s3", "ssm"], var.spec_store)
    error_message = "spec_store: s3 or ssm."
  }
}

variable "spec_loader_image" {
  description = "Image of the init container that copies the specs from S3 (spec_store = s3); any image with the AWS CLI v2."
  type        = string
  default     = "public.ecr.aws/aws-cli/aws-cli:2.27.50"
}

variable "isolate_roles" {
  description = "One task role per pipeline set instead of one for the whole service. true: every spec runs as its own ECS service (its own task definition, with desired_count tasks of cpu and memory each) under a role that may use only that spec's tables (table, dead-letter and late-rows tables, under lake_prefix) and checkpoint (under checkpoint_prefix), read only its own spec. The spec's locations must be s3:// URIs in the lake bucket or start with $${TRIBUTARY_LAKE} / $${TRIBUTARY_CHECKPOINTS}; the plan fails otherwise. false: one service and one role for every spec."
  type        = bool
  default     = false
}

variable "desired_count" {
  description = "Number of tasks. More than one needs `state_scope: partition` in every spec, so the consumer group spreads the partitions."
  type        = number
  default     = 1
}

variable "cpu" {
  description = "Task CPU units (1024 = 1 vCPU). See docs/deployment.md for sizing."
  type        = number
  default     = 2048
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 4096
}

variable "ephemeral_storage_gib" {
  description = "Task disk in GiB (21-200): local checkpoints and, with event-time state, RocksDB."
  type        = number
  default     = 30
}

variable "vpc_id" {
  description = "VPC of the tasks."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks (no public IPs are assigned)."
  type        = list(string)
}

variable "kafka_bootstrap_servers" {
  description = "Comma-separated brokers, e.g. the MSK cluster's bootstrap_brokers_sasl_scram. Exposed to specs as KAFKA_BOOTSTRAP_SERVERS."
  type        = string
}

variable "kafka_broker_cidrs" {
  description = "CIDR blocks of the brokers; the tasks may open connections to these on kafka_port only."
  type        = list(string)
}

variable "kafka_port" {
  description = "Broker port: 9096 for MSK with SASL/SCRAM, 9094 for MSK with TLS, 9092 for plaintext."
  type        = number
  default     = 9096
}

variable "kafka_sasl_scram_secret_arn" {
  description = "Secrets Manager secret with JSON keys `username` and `password` (an MSK SCRAM secret). Exposed to the container as KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD for the specs' sasl.* properties. Null: no SASL."
  type        = string
  default     = null
}

variable "schema_registry_url" {
  description = "Base URL of the Confluent-compatible schema registry. Exposed to specs as SCHEMA_REGISTRY_URL."
  type        = string
}

variable "schema_registry_cidrs" {
  description = "CIDR blocks of the schema registry; the tasks may connect to these on schema_registry_port only."
  type        = list(string)
}

variable "schema_registry_port" {
  description = "Port of the schema registry."
  type        = number
  default     = 443
}

variable "schema_registry_credentials_secret_arn" {
  description = "Secrets Manager secret with JSON key `basic_auth` (`user:password`), exposed as SCHEMA_REGISTRY_BASIC_AUTH for the specs' `basic_auth_env`. Null: no registry auth."
  type        = string
  default     = null
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys that encrypt the Kafka and registry secrets (the execution role may decrypt with them)."
  type        = list(string)
  default     = []
}

variable "aws_endpoint_cidrs" {
  description = "CIDR blocks of the interface VPC endpoints (ECR, CloudWatch Logs, Secrets Manager, SSM, STS) or of the NAT path to them; the tasks may reach these on 443. S3 is reached through its gateway endpoint's prefix list."
  type        = list(string)
}

variable "lake_bucket_name" {
  description = "Name of the lake bucket this module creates (SSE-KMS, versioned, private, TLS only)."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix of the tables in the lake bucket; specs see s3://<bucket>/<prefix> as TRIBUTARY_LAKE. The task may write only here."
  type        = string
  default     = "lake"
}

variable "checkpoint_prefix" {
  description = "Key prefix of the checkpoints in the lake bucket; specs see s3://<bucket>/<prefix> as TRIBUTARY_CHECKPOINTS, so a replacement task resumes from S3 alone. The task may write only here and under lake_prefix."
  type        = string
  default     = "checkpoints"
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept before it expires. Live Delta files are current versions and are never expired by the lifecycle rules; vacuum decides when unreferenced files go."
  type        = number
  default     = 30
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log group."
  type        = number
  default     = 365
}

variable "environment" {
  description = "Extra environment variables of the Tributary container (RUST_LOG, variables the specs reference, ...). Never secrets: use the *_secret_arn inputs."
  type        = map(string)
  default     = {}
}

variable "deployment_minimum_healthy_percent" {
  description = "ECS deployment floor. 0 (the default) stops the old task before the new one starts, which `state_scope: topic` needs (one owner per topic); with `state_scope: partition` and several tasks, 50 gives rolling upgrades."
  type        = number
  default     = 0
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
