# No ingress: the admin server listens on loopback for the health check and
# for sidecars. Egress only to the brokers, the registry and AWS endpoints.
resource "aws_security_group" "tributary" {
  name_prefix = "tributary-${var.name}-"
  description = "Tributary ${var.name}: egress to Kafka, the schema registry and AWS endpoints only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "kafka" {
  for_each = toset(var.kafka_broker_cidrs)

  security_group_id = aws_security_group.tributary.id
  description       = "Kafka brokers"
  ip_protocol       = "tcp"
  from_port         = var.kafka_port
  to_port           = var.kafka_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "schema_registry" {
  for_each = toset(var.schema_registry_cidrs)

  security_group_id = aws_security_group.tributary.id
  description       = "Schema registry"
  ip_protocol       = "tcp"
  from_port         = var.schema_registry_port
  to_port           = var.schema_registry_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "aws_endpoints" {
  for_each = toset(var.aws_endpoint_cidrs)

  security_group_id = aws_security_group.tributary.id
  description       = "AWS interface endpoints (ECR, Logs, Secrets Manager, SSM, STS)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

data "aws_prefix_list" "s3" {
  name = "com.amazonaws.${local.region}.s3"
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  security_group_id = aws_security_group.tributary.id
  description       = "S3 through its gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = data.aws_prefix_list.s3.id
}
