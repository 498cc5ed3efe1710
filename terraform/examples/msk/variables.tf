variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "environment_name" {
  description = "Name of this deployment; prefixes resources."
  type        = string
  default     = "tributary-example"
}

variable "vpc_id" {
  description = "An existing VPC with private subnets, an S3 gateway endpoint and interface endpoints (or a NAT) for ECR, Logs, Secrets Manager and STS."
  type        = string
}

variable "private_subnet_ids" {
  description = "Two or three private subnets in different availability zones: one MSK broker per subnet, and the Tributary tasks."
  type        = list(string)
}

variable "aws_endpoint_cidrs" {
  description = "CIDR blocks of the interface endpoints or NAT path (often the VPC CIDR)."
  type        = list(string)
}

variable "image" {
  description = "Tributary image in ECR, pinned, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/tributary:0.1.0."
  type        = string
}

variable "image_repository_arn" {
  description = "ARN of the ECR repository of the image."
  type        = string
}

variable "lake_bucket_name" {
  description = "Globally unique name of the lake bucket to create."
  type        = string
}

variable "schema_registry_url" {
  description = "HTTPS URL of the Confluent-compatible schema registry (Confluent Cloud, or one you run)."
  type        = string
}

variable "schema_registry_cidrs" {
  description = "CIDR blocks the registry answers from (its load balancer's subnets, or the NAT path for a hosted registry)."
  type        = list(string)
}

variable "schema_registry_credentials_secret_arn" {
  description = "Secrets Manager secret with JSON key basic_auth = \"key:secret\" for the registry; null when it needs none."
  type        = string
  default     = null
}

variable "schema_registry_secret_kms_key_arn" {
  description = "Customer-managed KMS key of the registry secret, if it has one."
  type        = string
  default     = null
}

variable "kafka_version" {
  description = "Kafka version of the MSK cluster."
  type        = string
  default     = "3.6.0"
}

variable "broker_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m7g.large"
}

variable "tributary_tasks" {
  description = "Tributary tasks; the example specs use state_scope: partition, so more tasks share the partitions."
  type        = number
  default     = 2
}
