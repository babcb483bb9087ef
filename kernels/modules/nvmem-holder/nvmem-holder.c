// SPDX-License-Identifier: GPL-2.0
/*
 * nvmem-holder: an in-kernel nvmem consumer that keeps a struct nvmem_device across its
 * provider's removal, for unplug-torture (scenario S1, kernel-notes §8).
 *
 * debugfs /sys/kernel/debug/nvmem-holder/:
 *   get          write "HOLDER DEVICE": nvmem_device_find(DEVICE, device_match_name); the
 *                holder named HOLDER keeps that reference (-EEXIST if HOLDER exists)
 *   HOLDER/read  read from offset 0: nvmem_device_read(dev, 0, 16, buf), printed as hex, or
 *                the negative errno; reads past offset 0 return the rest of that text and
 *                do not touch the device again (one `cat` = one device read)
 *   put          write "HOLDER": nvmem_device_put() its reference and remove HOLDER/
 *
 * Every holder owns exactly one reference, so two holders on one device never drop each
 * other's. Nothing here checks whether the provider is still there: that is the point. After
 * the provider (at24) is unbound, a read goes into the provider's freed state on kernels
 * whose nvmem core does not track provider removal.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nvmem-consumer.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define HOLDER_READ_LEN 16
#define HOLDER_NAME_LEN 32

struct holder {
	struct list_head node;
	char name[HOLDER_NAME_LEN];
	struct nvmem_device *nvmem;
	struct dentry *dir;
	/* serialises reads of this holder; text is what the last read at offset 0 said */
	struct mutex lock;
	char text[3 * HOLDER_READ_LEN + 16];
	size_t text_len;
};

static struct dentry *holder_root;
/* protects holders (the list), not what each holder does */
static DEFINE_MUTEX(holders_lock);
static LIST_HEAD(holders);

static struct holder *holder_find(const char *name)
{
	struct holder *h;

	list_for_each_entry(h, &holders, node)
		if (!strcmp(h->name, name))
			return h;
	return NULL;
}

/* Removes the holder's files (waiting for reads in flight), then drops its reference. */
static void holder_free(struct holder *h)
{
	debugfs_remove_recursive(h->dir);
	nvmem_device_put(h->nvmem);
	mutex_destroy(&h->lock);
	kfree(h);
}

static ssize_t read_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct holder *h = file->private_data;
	u8 buf[HOLDER_READ_LEN];
	ssize_t ret;
	int n = 0, i;

	mutex_lock(&h->lock);
	if (*ppos == 0) {
		ret = nvmem_device_read(h->nvmem, 0, HOLDER_READ_LEN, buf);
		if (ret < 0) {
			n = scnprintf(h->text, sizeof(h->text), "%zd\n", ret);
		} else {
			for (i = 0; i < ret && i < HOLDER_READ_LEN; i++)
				n += scnprintf(h->text + n, sizeof(h->text) - n, "%02x", buf[i]);
			n += scnprintf(h->text + n, sizeof(h->text) - n, "\n");
		}
		h->text_len = n;
	}
	ret = simple_read_from_buffer(ubuf, len, ppos, h->text, h->text_len);
	mutex_unlock(&h->lock);
	return ret;
}

static const struct file_operations read_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.read = read_read,
};

/* Copies a user write of at most @size - 1 bytes into @buf, NUL-terminated and trimmed. */
static char *copy_words(char *buf, size_t size, const char __user *ubuf, size_t len)
{
	if (len >= size)
		return ERR_PTR(-E2BIG);
	if (copy_from_user(buf, ubuf, len))
		return ERR_PTR(-EFAULT);
	buf[len] = '\0';
	return strim(buf);
}

static ssize_t get_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	char words[HOLDER_NAME_LEN + 64];
	char *name, *device;
	struct holder *h;
	int ret;

	name = copy_words(words, sizeof(words), ubuf, len);
	if (IS_ERR(name))
		return PTR_ERR(name);
	device = strchr(name, ' ');
	if (!device)
		return -EINVAL;
	*device++ = '\0';
	device = strim(device);
	if (!*name || !*device || strlen(name) >= HOLDER_NAME_LEN || strchr(name, '/'))
		return -EINVAL;

	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	strscpy(h->name, name, sizeof(h->name));
	mutex_init(&h->lock);

	h->nvmem = nvmem_device_find(device, device_match_name);
	if (IS_ERR(h->nvmem)) {
		ret = PTR_ERR(h->nvmem);
		goto free;
	}

	mutex_lock(&holders_lock);
	if (holder_find(h->name)) {
		mutex_unlock(&holders_lock);
		ret = -EEXIST;
		goto put;
	}
	h->dir = debugfs_create_dir(h->name, holder_root);
	debugfs_create_file("read", 0400, h->dir, h, &read_fops);
	list_add(&h->node, &holders);
	mutex_unlock(&holders_lock);
	return len;

put:
	nvmem_device_put(h->nvmem);
free:
	mutex_destroy(&h->lock);
	kfree(h);
	return ret;
}

static ssize_t put_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	char words[HOLDER_NAME_LEN + 1];
	struct holder *h;
	char *name;

	name = copy_words(words, sizeof(words), ubuf, len);
	if (IS_ERR(name))
		return PTR_ERR(name);

	mutex_lock(&holders_lock);
	h = holder_find(name);
	if (h)
		list_del(&h->node);
	mutex_unlock(&holders_lock);
	if (!h)
		return -ENOENT;

	holder_free(h);
	return len;
}

static const struct file_operations get_fops = {
	.owner = THIS_MODULE,
	.write = get_write,
};

static const struct file_operations put_fops = {
	.owner = THIS_MODULE,
	.write = put_write,
};

static int __init nvmem_holder_init(void)
{
	holder_root = debugfs_create_dir("nvmem-holder", NULL);
	debugfs_create_file("get", 0200, holder_root, NULL, &get_fops);
	debugfs_create_file("put", 0200, holder_root, NULL, &put_fops);
	return 0;
}

static void __exit nvmem_holder_exit(void)
{
	struct holder *h, *next;

	list_for_each_entry_safe(h, next, &holders, node) {
		list_del(&h->node);
		holder_free(h);
	}
	debugfs_remove_recursive(holder_root);
}

module_init(nvmem_holder_init);
module_exit(nvmem_holder_exit);
MODULE_DESCRIPTION("unplug-torture: an nvmem consumer holding a device across its removal");
MODULE_LICENSE("GPL");
