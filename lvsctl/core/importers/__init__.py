"""Import other tools' configuration (keepalived.conf, ipvsadm rules) as an lvsctl cluster file."""
